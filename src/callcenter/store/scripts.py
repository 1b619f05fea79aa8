"""The atomic Lua scripts on Redis state, with typed wrappers.

Every state change of the call center is one script in `callcenter/store/lua/` (one file per command,
with a fixed header: key families read and written, ARGV, return codes, events, commands, and the
library modules it uses). A script checks the state before it writes, changes it, and appends the
resulting commands and events in the same atomic step.

The steps run as Redis Functions (issue 15): one library (`store.sources.library`: the generated
prelude, the modules of `lua/lib/`, every step a registered function, all named by a hash of the
source), called with FCALL. The library is loaded on first use and again when Redis answers
"Function not found" (a restart without persistence, a fresh master); on Redis Cluster FUNCTION
LOAD goes to every primary. `load_source` (one step as a standalone script) is for tests and benches.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from callcenter.redis import REDIS_DOWN
from callcenter.redis import text as _text
from callcenter.store.codes import RC, Result
from callcenter.store.keys import Keys
from callcenter.store.sources import LIB_ORDER as LIB_ORDER  # the names callers import from here
from callcenter.store.sources import OTHER_SCRIPTS as OTHER_SCRIPTS
from callcenter.store.sources import header_field as header_field
from callcenter.store.sources import library
from callcenter.store.sources import load_source as load_source
from callcenter.store.sources import report_script as report_script
from callcenter.store.sources import script_libs as script_libs

# sends commands (tuples of their arguments) and answers their replies, or None (see apply_reports)
Sender = Callable[[list[tuple[Any, ...]]], Awaitable[list[Any] | None]]


def now_ms() -> int:
    return int(time.time() * 1000)


def _blank(value: int | None) -> int | str:
    """A script argument for an optional number: "" means 'the global value'."""
    return "" if value is None else value


class Reconciled(NamedTuple):
    """What one reconcile step did: agents freed, calls ended."""

    released: int
    ended: int


def _result(raw: Any) -> Result:
    rc = RC(int(raw[0]))
    return Result(rc, _text(raw[1]) if len(raw) > 1 else "")


def not_loaded(exc: BaseException) -> bool:
    """Redis does not hold the function library (a restart without persistence, a fresh master)."""
    return isinstance(exc, ResponseError) and "Function not found" in str(exc)


def _failed(exc: ResponseError) -> Result:
    """A script that raised (outside the guard of a report step: its payload, a Lua bug)."""
    return Result(RC.FAILED, f"script error: {exc}")


class Store:
    """Typed access to the scripts of one tenant. `clock` returns now in ms (tests pass their own)."""

    def __init__(self, redis: Redis, tenant: str, clock: Any = now_ms) -> None:
        self.redis = redis
        self.keys = Keys(tenant)
        self.clock = clock
        self.library = library()

    async def load(self) -> None:
        """FUNCTION LOAD the library (REPLACE: loading the same version twice, from several
        processes at once, is harmless; Redis replicates it to the replicas and persists it).

        On Redis Cluster it goes to every primary, one by one: the master of this tenant's slot
        must take it; another master that is away (being failed over) gets it on its own first
        "Function not found", as does a master added or promoted later."""
        primaries = getattr(self.redis, "get_primaries", None)
        if primaries is None:
            await self.redis.function_load(self.library.source, replace=True)
            return
        own = self.redis.get_node_from_key(self.keys.events)  # type: ignore[attr-defined]
        for node in [own, *(n for n in primaries() if n.name != own.name)]:
            try:
                await self.redis.execute_command(  # type: ignore[no-untyped-call]
                    "FUNCTION LOAD", "REPLACE", self.library.source, target_nodes=node)
            except REDIS_DOWN:
                if node is own:
                    raise

    async def _fcall(self, name: str, *args: Any) -> Any:
        """FCALL one step with the tenant's events stream as its declared key; loads the library
        when Redis does not have it, then calls again."""
        function = self.library.functions[name]
        try:
            return await self.redis.fcall(function, 1, self.keys.events, *args)
        except ResponseError as exc:
            if not not_loaded(exc):
                raise
        await self.load()
        return await self.redis.fcall(function, 1, self.keys.events, *args)

    async def _run(self, name: str, *args: Any, now: int | None = None) -> Result:
        ts = self.clock() if now is None else now
        return _result(await self._fcall(name, ts, *args))

    # -- reports from sip-edges (the dispatcher) ---------------------------------------------------
    async def apply_report(self, report_type: str, entry_id: str, data: bytes, now: int | None = None) -> Result:
        """Apply one report; `data` is the entry's msgpack payload, passed to Lua untouched. A script
        error comes back as FAILED with Redis' message (a connection error is raised)."""
        try:
            return await self._run(report_script(report_type), entry_id, data, now=now)
        except REDIS_DOWN:  # a shard changing master (cluster) is Redis away too
            raise
        except ResponseError as exc:
            if not_loaded(exc):  # still not there after loading it
                raise
            return _failed(exc)

    async def apply_reports(self, reports: Sequence[tuple[str, str, bytes]], now: int | None = None,
                            send: Sender | None = None) -> list[Result]:
        """Apply several reports (type, entry id, msgpack payload) in one round trip, in this order.

        Each is still its own atomic script; Redis runs them one after another in the order given,
        so the reports of one call keep their order (a report after one that came back
        OUT_OF_ORDER is OUT_OF_ORDER too, and changes nothing). A script error is that report's
        result, FAILED with Redis' message: the other reports of the batch are applied.

        Functions go by name without a FUNCTION LIST round trip first; when Redis lost the library (a
        restart), it is loaded and the whole batch runs again: a report already applied comes back
        DUPLICATE, so running it twice changes nothing.

        `send` (a stream consumer's, `bus.StreamConsumer.ride`): the FCALLs go out through it, in the
        write that also carries the consumer's acknowledgement and next read (one send per batch);
        it answers the FCALLs' replies as a pipeline would (an error reply as its exception), or
        None when it cannot take them now, and then the Store sends them itself."""
        ts = self.clock() if now is None else now
        events, functions = self.keys.events, self.library.functions
        for attempt in (1, 2):
            raw: list[Any] | None = None
            if send is not None and attempt == 1:
                raw = await send([("FCALL", functions[report_script(report_type)], 1, events, ts, entry_id, data)
                                  for report_type, entry_id, data in reports])
            if raw is None:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for report_type, entry_id, data in reports:
                        # the raw command, routed (cluster pipeline) by its declared key, the tenant's events stream
                        pipe.execute_command("FCALL", functions[report_script(report_type)], 1,
                                             events, ts, entry_id, data)
                    raw = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(not_loaded(r) for r in raw):
                await self.load()
                continue
            for r in raw:
                if isinstance(r, Exception) and (not isinstance(r, ResponseError) or not_loaded(r)
                                                 or isinstance(r, REDIS_DOWN)):
                    raise r
            return [_failed(r) if isinstance(r, ResponseError) else _result(r) for r in raw]
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def fire_timers(self, limit: int = 100, now: int | None = None) -> int:
        return (await self.fire_timers_next(limit, now))[0]

    async def fire_timers_next(self, limit: int = 100, now: int | None = None,
                               sleep_max_ms: int | None = None) -> tuple[int, int | None]:
        """Fire the due timers (at most `limit`): how many fired, and when the first timer left is
        due (ms; None: no timer left). `sleep_max_ms`: the caller sleeps until that first due timer,
        this long at most, and a step that adds one due sooner wakes it (the timer loop)."""
        ts = self.clock() if now is None else now
        args = (limit,) if sleep_max_ms is None else (limit, sleep_max_ms)
        raw = await self._fcall("fire_timers", ts, *args)
        first = int(raw[2]) if len(raw) > 2 else -1
        return int(raw[1]), (None if first < 0 else first)

    # -- agents -------------------------------------------------------------------------------------
    async def agent_login(self, agent_id: str, now: int | None = None) -> Result:
        return await self._run("agent_login", agent_id, now=now)

    async def agent_logout(self, agent_id: str, now: int | None = None) -> Result:
        return await self._run("agent_logout", agent_id, now=now)

    async def agent_pause(self, agent_id: str, reason: str, now: int | None = None) -> Result:
        return await self._run("agent_pause", agent_id, reason, now=now)

    async def agent_unpause(self, agent_id: str, now: int | None = None) -> Result:
        return await self._run("agent_unpause", agent_id, now=now)

    async def agent_release(self, agent_id: str, now: int | None = None) -> Result:
        """Free an agent by force (its live call, if any, is hung up)."""
        return await self._run("agent_release", agent_id, now=now)

    async def dispatch_call(self, call_id: str, agent_id: str, now: int | None = None) -> Result:
        """Hand a queued call to a free agent (external dispatching)."""
        return await self._run("dispatch_call", call_id, agent_id, now=now)

    async def reconcile(self, now: int | None = None, edge_lapse_ms: int = 0, limit: int = 500) -> Reconciled:
        """End the calls that cannot end by themselves (their edge unknown for `edge_lapse_ms`, 0:
        not checked; stalled in their state), at most `limit`, then free agents no live call holds."""
        ts = self.clock() if now is None else now
        raw = await self._fcall("reconcile", ts, edge_lapse_ms, limit)
        return Reconciled(released=int(raw[1]), ended=int(raw[2]))

    async def stats_reset(self, now: int | None = None) -> Result:
        return await self._run("stats_reset", now=now)

    async def edge_lost(self, edge_id: str, lapse_ms: int, limit: int = 500, now: int | None = None) -> Result:
        """End the calls of an edge whose heartbeat is older than `lapse_ms` (detail: calls ended;
        NOT_FOUND: no heartbeat entry; STALE: the heartbeat is recent)."""
        return await self._run("edge_lost", edge_id, lapse_ms, limit, now=now)

    # -- a sip-edge's id: lease and heartbeat (the edge) ----------------------------------------------
    async def edge_beat(self, edge_id: str, token: str, lease_ms: int, group: str = "",
                        now: int | None = None) -> Result:
        """Beat for `edge_id` of address group `group` ("" = none), taking or renewing its lease for
        `token` (ALREADY, detail the holder's token: another process holds the id, nothing was
        written; OK with detail lost_ms: edge_lost ran for this id then, since the last beat)."""
        return await self._run("edge_beat", edge_id, token, lease_ms, group, now=now)

    async def edge_release(self, edge_id: str, token: str, now: int | None = None) -> Result:
        """Give up the lease and the heartbeat of `edge_id` if `token` holds it (else NOT_FOUND)."""
        return await self._run("edge_release", edge_id, token, now=now)

    # -- provisioning cache ------------------------------------------------------------------------
    async def flow_upsert(self, flow_id: str, fields: dict[str, Any], now: int | None = None) -> Result:
        args: list[Any] = [flow_id]
        for name, value in fields.items():
            args += [name, "" if value is None else value]
        return await self._run("flow_upsert", *args, now=now)

    async def flow_delete(self, flow_id: str, now: int | None = None) -> Result:
        return await self._run("flow_delete", flow_id, now=now)

    async def agent_upsert(self, agent_id: str, uri: str | None, skills: list[str], wrapup_s: int | None,
                           now: int | None = None, max_no_answer: int | None = None, chat_uri: str | None = None,
                           chat_capacity: int | None = None) -> Result:
        """Create or update an agent; None for wrapup_s / max_no_answer / chat_capacity = the global
        value; None (or "") for uri = no audio calls, for chat_uri = no chats (one of them is needed)."""
        return await self._run("agent_upsert", agent_id, uri or "", ",".join(skills), _blank(wrapup_s),
                               _blank(max_no_answer), chat_uri or "", _blank(chat_capacity), now=now)

    async def sip_register(self, agent_id: str, *, max_contacts: int, max_registrations: int, call_id: str,
                           cseq: int, remove_all: bool, contacts: list[tuple[str, int, str]],
                           now: int | None = None) -> Result:
        """A verified REGISTER of an agent's AOR: `contacts` are (key, expiry ms or 0 to remove,
        binding JSON). OK's detail: the live bindings (JSON list of [binding JSON, expiry ms])."""
        flat = [part for contact in contacts for part in contact]
        return await self._run("sip_register", agent_id, max_contacts, max_registrations, call_id, cseq,
                               "1" if remove_all else "0", *flat, now=now)

    async def registration_lapse(self, limit: int = 100, now: int | None = None) -> int:
        """Forget AORs whose last contact lapsed and pause their logged-in agents (`unregistered`);
        returns how many agents were paused."""
        res = await self._run("registration_lapse", limit, now=now)
        return int(res.detail or 0)

    async def agent_delete(self, agent_id: str, now: int | None = None) -> Result:
        return await self._run("agent_delete", agent_id, now=now)

    # -- reads ------------------------------------------------------------------------------------
    async def agent(self, agent_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.agent(agent_id))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    async def call(self, call_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.call(call_id))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    async def flow(self, flow_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.flow(flow_id))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    async def write_config(self, values: dict[str, Any]) -> None:
        mapping: dict[Any, Any] = {k: (int(v) if isinstance(v, bool) else v) for k, v in values.items()}
        await self.redis.hset(self.keys.config, mapping=mapping)
