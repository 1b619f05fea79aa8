"""The atomic Lua scripts on Redis state, with typed wrappers.

Every state change of the call center is one script in `callcenter/store/lua/` (one file per command,
with a fixed header: key families read and written, ARGV, return codes, events, commands, and the
library modules it uses). A script checks the state before it writes, changes it, and appends the
resulting commands and events in the same atomic step. Scripts are registered with redis-py's
`register_script` (EVALSHA with a NOSCRIPT fallback).

A script's source (`load_source`) is one concatenation, by rule: the generated prelude
(`store.prelude`: keys, RC, EVENT_V, config defaults), then the modules of `lua/lib/` that its
`-- LIB:` header line names, with the modules they name in their `-- NEEDS:` lines, in `LIB_ORDER`,
then the script. Nothing else is expanded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from callcenter.contract.reports import REPORTS
from callcenter.redis import REDIS_DOWN
from callcenter.redis import text as _text
from callcenter.store.codes import RC, Result
from callcenter.store.keys import Keys
from callcenter.store.prelude import prelude


def report_script(report_type: str) -> str:
    """The script that applies a report type, by rule: `report.call_arrived` -> `report_call_arrived`."""
    return report_type.replace(".", "_")


OTHER_SCRIPTS = (
    "agent_login", "agent_logout", "agent_upsert", "agent_delete", "agent_pause", "agent_unpause",
    "agent_release", "dispatch_call", "flow_upsert", "flow_delete", "fire_timers", "reconcile", "stats_reset",
    "edge_lost", "edge_beat", "edge_release", "sip_register", "registration_lapse",
)


def now_ms() -> int:
    return int(time.time() * 1000)


# the modules of lua/lib/ in the order they are concatenated: each uses only functions of the
# modules before it (Lua locals must be defined before they are referenced)
LIB_ORDER = ("config", "core", "stats", "chat", "agents", "queue", "offer", "calls", "report")


def header_field(source: str, field: str) -> list[str]:
    """The comma-separated names of a `-- FIELD: a, b` header line (empty when absent or `-`)."""
    for line in source.splitlines():
        if line.startswith(f"-- {field}:"):
            value = line.split(":", 1)[1].strip()
            return [] if value in ("", "-") else [name.strip() for name in value.split(",")]
    return []


def _lua_file(path: str) -> str:
    return resources.files("callcenter.store.lua").joinpath(path).read_text()


def script_libs(name: str) -> list[str]:
    """The library modules a script loads: those its LIB line names and what they need, in LIB_ORDER."""
    wanted: set[str] = set()
    todo = header_field(_lua_file(f"{name}.lua"), "LIB")
    while todo:
        module = todo.pop()
        if module not in LIB_ORDER:
            raise ValueError(f"{name}.lua: unknown library module {module!r}")
        if module not in wanted:
            wanted.add(module)
            todo += header_field(_lua_file(f"lib/{module}.lua"), "NEEDS")
    return [module for module in LIB_ORDER if module in wanted]


def load_source(name: str) -> str:
    """The full source of one script: prelude, the library modules it needs, the script. The body
    of a report script runs inside `run_report_step` (lib/report.lua), which catches a Lua error
    after its first write and marks the report failed on its call (Redis has no rollback)."""
    libs = script_libs(name)
    body = _lua_file(f"{name}.lua")
    if "report" in libs:
        body = f"local function step()\n{body}\nend\nreturn run_report_step(step)\n"
    return "\n".join([prelude(), *(_lua_file(f"lib/{module}.lua") for module in libs), body])


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


def _failed(exc: ResponseError) -> Result:
    """A script that raised (outside the guard of a report step: its payload, a Lua bug)."""
    return Result(RC.FAILED, f"script error: {exc}")


class Store:
    """Typed access to the scripts of one tenant. `clock` returns now in ms (tests pass their own)."""

    def __init__(self, redis: Redis, tenant: str, clock: Any = now_ms) -> None:
        self.redis = redis
        self.keys = Keys(tenant)
        self.clock = clock
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(load_source(name))
            for name in (*map(report_script, REPORTS), *OTHER_SCRIPTS)
        }

    async def _run(self, name: str, *args: Any, now: int | None = None) -> Result:
        ts = self.clock() if now is None else now
        raw = await self._scripts[name](keys=[self.keys.events], args=[ts, *args])
        return _result(raw)

    # -- reports from sip-edges (the dispatcher) ---------------------------------------------------
    async def apply_report(self, report_type: str, entry_id: str, data: bytes, now: int | None = None) -> Result:
        """Apply one report; `data` is the entry's msgpack payload, passed to Lua untouched. A script
        error comes back as FAILED with Redis' message (a connection error is raised)."""
        try:
            return await self._run(report_script(report_type), entry_id, data, now=now)
        except (NoScriptError, *REDIS_DOWN):  # a shard changing master (cluster) is Redis away too
            raise
        except ResponseError as exc:
            return _failed(exc)

    async def apply_reports(self, reports: Sequence[tuple[str, str, bytes]], now: int | None = None) -> list[Result]:
        """Apply several reports (type, entry id, msgpack payload) in one round trip, in this order.

        Each is still its own atomic script; Redis runs them one after another in the order given,
        so the reports of one call keep their order (a report after one that came back
        OUT_OF_ORDER is OUT_OF_ORDER too, and changes nothing). A script error is that report's
        result, FAILED with Redis' message: the other reports of the batch are applied.

        Scripts go by their SHA without a SCRIPT EXISTS round trip first; when Redis lost them (a
        restart), they are loaded and the whole batch runs again: a report already applied comes
        back DUPLICATE, so running it twice changes nothing."""
        ts = self.clock() if now is None else now
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for report_type, entry_id, data in reports:
                    # the raw command: redis-py's cluster pipeline refuses `evalsha()` (it cannot know
                    # the keys), but routes EVALSHA by its declared key, the tenant's events stream
                    pipe.execute_command("EVALSHA", self._scripts[report_script(report_type)].sha, 1,
                                         self.keys.events, ts, entry_id, data)
                raw = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in raw):
                for report_type in {t for t, _, _ in reports}:
                    script = self._scripts[report_script(report_type)]
                    script.sha = await self.redis.script_load(script.script)
                continue
            for r in raw:
                if isinstance(r, Exception) and (not isinstance(r, ResponseError)
                                                 or isinstance(r, (NoScriptError, *REDIS_DOWN))):
                    raise r
            break
        return [_failed(r) if isinstance(r, ResponseError) else _result(r) for r in raw]

    async def fire_timers(self, limit: int = 100, now: int | None = None) -> int:
        res = await self._run("fire_timers", limit, now=now)
        return int(res.detail or 0)

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
        raw = await self._scripts["reconcile"](keys=[self.keys.events], args=[ts, edge_lapse_ms, limit])
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
