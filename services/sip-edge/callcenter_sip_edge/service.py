"""The sip-edge service: the SIP stack's facts become reports on Redis, commands become SIP.

Reads: `cc:{t}:commands:<edge_id>` (consumer group `edge`, this edge the only consumer).
Writes: `cc:{t}:reports` (one report per fact, numbered per call with `seq`, in order) and, through
the lease on the edge id (ownership.py), the heartbeat `cc:{t}:edges` (score = now ms). The SIP
stack runs on the same loop, in turns of its own (sip_stack.py); this module never touches sippy
objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import redis.asyncio as aioredis
import structlog

from callcenter.bus import ACK, StreamConsumer, Verdict
from callcenter.contract import streams
from callcenter.contract.codec import DecodeError, Entry
from callcenter.contract.commands import Adopt, Command, Ring, RingAll, command_of
from callcenter.contract.reports import REPORTS, CallEnded, CommandRefused, Report
from callcenter.metrics import observe_since_entry
from callcenter.redis import REDIS_DOWN
from callcenter.redis_durability import ReplicaWait
from callcenter.settings import EdgeSettings
from callcenter.store.keys import Keys
from callcenter_sip_edge.checkpoint import AdoptedCall, Checkpoints, DialogCheckpoint
from callcenter_sip_edge.digest import Nonces
from callcenter_sip_edge.facts import CHECKPOINT_KIND, Fact
from callcenter_sip_edge.ownership import IdLease, StartRefused
from callcenter_sip_edge.publisher import ReportPublisher
from callcenter_sip_edge.registrar import RegistrarOptions, RegistrarSetup
from callcenter_sip_edge.registrations import ELSEWHERE, Binding, Registrations
from callcenter_sip_edge.session_options import SessionTimerOptions
from callcenter_sip_edge.sip_stack import SipStack
from callcenter_sip_edge.sippy.streams import StreamOptions

log = structlog.get_logger(__name__)

# after a failed heartbeat, the next try (Redis may be back any moment)
HEARTBEAT_RETRY_S = 0.2
# at a clean stop, how long to wait for the dispatchers to apply the ends of this edge's calls
ENDS_APPLIED_WAIT_S = 2.0

# A fact's kind is its report type without `report.`, and its data are the report's fields.
_REPORT_OF_KIND = {cls.TYPE.removeprefix("report."): cls for cls in REPORTS.values()}
# How many ended calls keep their last seq, for refusals of commands that arrive after the end
# (a few seconds' worth at full load; an older one gets seq 0, which the dispatcher also handles).
ENDED_SEQ_KEPT = 16_384


def report_class(kind: str) -> type[Report] | None:
    """The report class of a fact kind (`media_failed` -> MediaFailed); None for an unknown kind."""
    return _REPORT_OF_KIND.get(kind)


class _Started:
    """In the outbox: `kick` wrote a batch; the publisher's task reads its replies."""


_STARTED = _Started()


class EdgeService:
    """The asyncio side of the edge: publishes the SIP stack's facts as reports, executes its
    commands, beats its heartbeat, drains."""

    def __init__(self, settings: EdgeSettings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.tenant)
        self.edge_id = settings.edge_id
        self.lease = IdLease(redis, settings.tenant, self.edge_id, settings.edge_lapse_ms, settings.edge_group)
        self._seq: dict[str, int] = {}
        self._ended_seq: dict[str, int] = {}   # insertion-ordered: the oldest is evicted first
        self._outbox: asyncio.Queue[Report | DialogCheckpoint | _Started] = asyncio.Queue()
        self._publisher_idle = False   # its task waits for the outbox: `kick` may send for it
        self.checkpoints = Checkpoints(redis, self.keys, self.edge_id, live=self._seq.__contains__)
        self.publisher = ReportPublisher(redis, self.keys, self.edge_id, self.checkpoints,
                                         ReplicaWait.of(settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
                                         apply_at_once=settings.apply_call_ends,
                                         max_cpu=settings.apply_call_ends_max_cpu)
        self._stop = asyncio.Event()
        self.stack: SipStack | None = None
        self.registrations: Registrations | None = None
        if settings.sip_registrar:
            options = RegistrarOptions.from_settings(settings)
            self.registrations = Registrations(redis, settings.tenant, self.edge_id, options,
                                               Nonces(options.nonce_secret, options.nonce_ttl_s))
        self.commands = StreamConsumer(
            redis, stream=self.keys.commands(self.edge_id), group=streams.COMMANDS.group, consumer=self.edge_id,
            handler=self._execute, dead_stream=self.keys.dead, batch=100, block_ms=500, claim_idle_ms=5_000)

    # -- facts -> reports ----------------------------------------------------------------------
    def on_fact(self, fact: Fact) -> None:
        """Runs in a loop callback of its own, in the order sippy's turns produced the facts."""
        if fact.kind == CHECKPOINT_KIND:
            if fact.call_id in self._seq:   # not for a call that ended meanwhile
                self._outbox.put_nowait(DialogCheckpoint(fact.call_id, fact.data))
            return
        cls = report_class(fact.kind)
        if cls is None:
            log.warning("edge.unknown_fact", kind=fact.kind, call_id=fact.call_id)
            return
        if cls is CommandRefused and fact.call_id not in self._seq:
            seq = self._refusal_seq(fact.call_id)
        else:
            seq = self._seq.get(fact.call_id, 0) + 1
            if cls is CallEnded:
                self._seq.pop(fact.call_id, None)
                self._ended_seq[fact.call_id] = seq
                if len(self._ended_seq) > ENDED_SEQ_KEPT:
                    del self._ended_seq[next(iter(self._ended_seq))]
            else:
                self._seq[fact.call_id] = seq
        data = dict(fact.data)
        data.update(call_id=fact.call_id, edge=self.edge_id, seq=seq, ts=fact.ts_ms)
        self._outbox.put_nowait(cls.from_data(data))

    def _refusal_seq(self, call_id: str) -> int:
        """The seq of a refusal for a call with no open report stream here: the next one after the
        call's `call_ended` if it ended recently (applied after it), else 0 (outside any stream)."""
        last = self._ended_seq.get(call_id)
        if last is None:
            return 0
        self._ended_seq[call_id] = last + 1
        return last + 1

    def kick(self) -> None:
        """After a delivery of facts: when the publisher is idle, their batch is written to Redis
        now, in this callback, not in the publisher's task, which a wake-up would run one loop
        iteration later (behind the datagram batches that iteration reads: issue 15, agent BYE ->
        next INVITE). The task then reads the replies (the marker `_STARTED` in the outbox tells it),
        so batches still go one at a time, in order."""
        if not self._publisher_idle or self._outbox.empty() or not self.publisher.can_start():
            return
        first = self._outbox.get_nowait()
        assert not isinstance(first, _Started)   # only put here, while the task is not idle
        self.publisher.start(self._take_batch(first))   # takes it: can_start() said so, nothing awaited since
        self._publisher_idle = False
        self._outbox.put_nowait(_STARTED)

    def _take_batch(self, first: Report | DialogCheckpoint) -> list[Report | DialogCheckpoint]:
        """`first` and what follows it in the outbox, up to 500 (a `_STARTED` is never among them:
        it is put only while the task is idle, with the outbox emptied, and read by the task next)."""
        batch = [first]
        outbox = self._outbox
        while not outbox.empty() and len(batch) < 500:
            item = outbox.get_nowait()
            assert not isinstance(item, _Started)
            batch.append(item)
        return batch

    async def _publish_reports(self) -> None:
        """Send the outbox in batches, in order, each exactly once (publisher.py); or read the
        replies of the batch `kick` wrote."""
        try:
            while True:
                self._publisher_idle = True
                item = await self._outbox.get()
                self._publisher_idle = False
                if isinstance(item, _Started):
                    await self.publisher.finish()
                    continue
                await self.publisher.publish(self._take_batch(item))
        finally:
            self._publisher_idle = False   # stopped: nothing may start a batch it would not finish

    # -- commands -> SIP -----------------------------------------------------------------------
    async def _execute(self, entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        stack = self.stack
        assert stack is not None
        for e in entries:
            try:
                command = command_of(e)
            except DecodeError:
                log.warning("edge.unknown_command", type=e.type, entry_id=e.id)
                self._refuse_undecodable(e)
                continue
            if isinstance(command, Adopt):
                await self._adopt(command)
                continue
            if isinstance(command, Ring | RingAll):  # the ring decided (a free agent found) -> handed to SIP
                observe_since_entry("agent_free_to_ring", e.id)
                if isinstance(command, Ring):   # a hop of agent free -> ring (bench/free_to_ring.py)
                    log.debug("edge.ring_read", agent_id=command.agent_id, offer_id=command.offer_id)
                if self.registrations is not None:
                    routed = await self._to_contacts(command)
                    if routed is None:
                        continue
                    command = routed
            stack.execute(command)
        return {e.id: ACK for e in entries}

    async def _to_contacts(self, command: Ring | RingAll) -> Command | None:
        """A ring of an agent whose URI is its AOR goes to its registered contacts: a `ring` to all of
        them (handed to the stack here: None is returned), a `ring_all` target to its best one (none:
        that target is unreachable)."""
        regs, stack = self.registrations, self.stack
        assert regs is not None and stack is not None
        if isinstance(command, Ring):
            if not regs.may_be_aor(command.agent_id, command.uri):
                return command
            found = await self._bindings(command.agent_id)
            if found is None:
                return command
            here = [binding for binding in found if binding.reachable_from(self.edge_id)]
            if found and not here:
                # registered, but over connections another edge holds: refused now, not rung to a timeout
                log.info("call.contacts_elsewhere", call_id=command.call_id, agent_id=command.agent_id,
                         edges=sorted({binding.edge for binding in found}))
                stack.ring_registered(command, [], refusal=ELSEWHERE)
                return None
            stack.ring_registered(command, [binding.target() for binding in here])
            return None
        targets = []
        for target in command.targets:
            agent_id, uri = str(target.get("agent_id", "")), str(target.get("uri", ""))
            if regs.may_be_aor(agent_id, uri):
                found = await self._bindings(agent_id)
                if found is not None:
                    here = [binding for binding in found if binding.reachable_from(self.edge_id)]
                    uri = here[0].target() if here else ""
            targets.append({**target, "uri": uri})
        return replace(command, targets=targets)

    async def _bindings(self, agent_id: str) -> list[Binding] | None:
        assert self.registrations is not None
        try:
            return await self.registrations.bindings(agent_id)
        except (*REDIS_DOWN, aioredis.RedisError) as exc:
            # no contact known now: the ring is refused and the call offered again
            log.warning("edge.bindings_unavailable", agent_id=agent_id, error=repr(exc))
            return []

    async def _adopt(self, command: Adopt) -> None:
        """A lost peer's call handed to this edge (edge_lost): its checkpoint, then the SIP side
        adopts it as a restarted edge would (in order with the commands that follow)."""
        assert self.stack is not None
        record = await self.checkpoints.load_call(command.call_id)
        if record is None:
            self.on_fact(Fact(kind="command_refused", call_id=command.call_id, ts_ms=int(time.time() * 1000),
                              data={"command": command.TYPE, "offer_id": None, "reason": "unknown_call",
                                    "purpose": None}))
            return
        self._seq[record.call_id] = record.seq
        log.info("edge.call_handed_over", call_id=record.call_id, from_edge=command.from_edge)
        self.stack.adopt([record], reason="edge_lost")

    async def _drop_disowned(self) -> None:
        """After the dispatchers declared this edge lost (it was cut off or stopped for a lapse): the
        calls of then were ended (CDR edge_lost: their legs get the BYE nobody sent) or handed to a
        peer (forgotten here: no BYE, no report). Calls still this edge's go on."""
        stack = self.stack
        if stack is None:
            return
        ids = stack.call_ids()
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hmget(self.keys.call(call_id), "edge", "state")
            rows = await pipe.execute()
        ended, handed = [], []
        for call_id, (edge, state) in zip(ids, rows, strict=True):
            edge = edge.decode() if isinstance(edge, bytes) else edge
            if edge is not None and edge != self.edge_id:
                handed.append(call_id)
                self._seq.pop(call_id, None)
                self.checkpoints.writer.forget(call_id)
            elif state in (b"ended", "ended"):
                ended.append(call_id)
            # no hash: an arrival not applied yet (an ended call's hash outlives the lapse): kept
        log.warning("edge.calls_disowned", ended=len(ended), handed=len(handed),
                    kept=len(ids) - len(ended) - len(handed))
        stack.disown(ended=ended, handed=handed)

    def _refuse_undecodable(self, e: Entry) -> None:
        """A command that does not decode still ends in a report when it names a call."""
        call_id, offer_id = e.data.get("call_id"), e.data.get("offer_id")
        if isinstance(call_id, str) and call_id:
            self.on_fact(Fact(kind="command_refused", call_id=call_id, ts_ms=int(time.time() * 1000), data={
                "command": e.type, "offer_id": offer_id if isinstance(offer_id, str) else None, "reason": "invalid",
                "purpose": e.data.get("purpose") if isinstance(e.data.get("purpose"), str) else None}))

    # -- lifecycle -----------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Beat until cancelled: also while draining, or the dispatchers would take this edge for
        lost and end the calls it is still carrying (edge_lost). Each beat renews the lease on the id;
        a lost lease (another process took the id) stops this edge as SIGTERM does.

        A beat that took longer than the interval waited for a paused Redis and carries the time
        it was sent: beat again at once with the time it lands. A failed beat is tried again soon,
        so the first beat after an outage lands early (the dispatchers allow a fresh lapse then).
        A beat unanswered after the lease's life (half the lapse) is given up and tried again on
        another connection: one sent into a silent network (a partition that drops packets) would
        otherwise wait for TCP to give up, minutes after the network healed, and this edge would
        go on for all that time not knowing that it was declared lost meanwhile."""
        interval = self.settings.heartbeat_interval_ms / 1000
        give_up_s = max(interval, self.lease.lease_ms / 1000)
        while True:
            sent = time.monotonic()
            try:
                if not await asyncio.wait_for(self.lease.beat(), timeout=give_up_s):
                    self._stop.set()
                    return
                if self.lease.declared_lost_ms is not None:
                    await self._drop_disowned()
                    self.lease.declared_lost_ms = None
            except (*REDIS_DOWN, aioredis.RedisError, TimeoutError) as exc:   # any error: the beat must go on
                log.warning("edge.heartbeat_failed", error=repr(exc))
                await asyncio.sleep(min(interval, HEARTBEAT_RETRY_S))
                continue
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - sent)))

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Take the id, load the calls a previous process of this id left, bind the port (adopting
        them), serve until stopped, drain, release the id."""
        if not await self.lease.take(self._stop):
            return
        adopted = await self._load_checkpoints()
        try:
            await self._serve(adopted)
        finally:
            await self.lease.release()
        log.info("edge.stopped", edge_id=self.edge_id)

    async def _load_checkpoints(self) -> list[AdoptedCall]:
        """Before the SIP stack and the command stream: the calls to adopt, their report streams
        continued from the checkpointed seq (the dispatcher takes the next one). Redis is waited for:
        a command read before the adoption would find no call and end it (`unknown_call`)."""
        delay = 0.05
        while True:
            try:
                await self.checkpoints.read_ttl()
                calls = await self.checkpoints.load()
                break
            except (*REDIS_DOWN, aioredis.RedisError) as exc:
                log.warning("edge.checkpoints_unavailable", error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        for call in calls:
            self._seq[call.call_id] = call.seq
        if calls:
            log.info("edge.checkpoints_loaded", calls=len(calls))
        return calls

    async def _serve(self, adopted: Sequence[AdoptedCall] = ()) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        self.stack = SipStack(host=s.sip_host, port=s.sip_port, on_fact=self.on_fact, loop=loop,
                              advertised_host=s.sip_advertised_host, max_message_bytes=s.sip_max_message_bytes,
                              trusted_networks=s.sip_trusted_networks, invite_rate=s.sip_invite_rate,
                              invite_burst=s.sip_invite_burst, invite_rate_total=s.sip_invite_rate_total,
                              invite_burst_total=s.sip_invite_burst_total,
                              priority_networks=s.sip_priority_networks, adopt=adopted,
                              streams=StreamOptions.from_settings(s), registrar=None if self.registrations is None
                              else RegistrarSetup(self.registrations.options, self.registrations.nonces,
                                                  self.registrations.submit),
                              session_timers=SessionTimerOptions.from_settings(s), on_facts_delivered=self.kick)
        try:
            self.stack.start()   # on the loop's thread: sippy runs on it
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise StartRefused(f"UDP port {s.sip_port} on {s.sip_host} is held by another process "
                               "(is another edge running there?)") from exc
        log.info("edge.started", edge_id=self.edge_id, sip=f"{s.sip_host}:{s.sip_port}")
        tasks = [asyncio.create_task(self._publish_reports()), asyncio.create_task(self._heartbeat()),
                 asyncio.create_task(self.commands.run())]
        await self._stop.wait()
        await self._drain()
        self.commands.request_stop()
        await asyncio.wait_for(tasks[2], timeout=5)
        # let the last facts (ended of hung-up calls) reach Redis
        for _ in range(50):
            if self._outbox.empty():
                break
            await asyncio.sleep(0.05)
        await self._await_ends_applied()
        for task in tasks[:2]:
            task.cancel()
        await asyncio.gather(*tasks[:2], return_exceptions=True)  # no heartbeat after the release
        self.stack.stop()   # runs sippy itself until its BYEs are out (< 1 s)

    async def _await_ends_applied(self) -> None:
        """Still beating: wait (a little) until the dispatchers applied the ends of this edge's calls,
        so that the release that follows finds none and takes the heartbeat too (edge_release keeps
        it while calls of the id live, for edge_lost)."""
        key = self.keys.edge_calls(self.edge_id)
        deadline = time.monotonic() + ENDS_APPLIED_WAIT_S
        with contextlib.suppress(*REDIS_DOWN, aioredis.RedisError):
            while await self.redis.scard(key) and time.monotonic() < deadline:  # noqa: ASYNC110 - a Redis count
                await asyncio.sleep(0.05)

    async def _drain(self) -> None:
        """New INVITEs get 503 + Retry-After; calls in progress may finish until the deadline."""
        stack = self.stack
        assert stack is not None
        stack.set_accepting(False)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        log.info("edge.draining", active_calls=stack.active_calls(), timeout_s=self.settings.drain_timeout_s)
        while stack.active_calls() and time.monotonic() < deadline:  # noqa: ASYNC110 - a count the SIP turns change
            await asyncio.sleep(0.2)
        if stack.active_calls():
            log.warning("edge.drain_deadline", active_calls=stack.active_calls())
            stack.hangup_all("edge_shutdown")
            for _ in range(50):
                if not stack.active_calls():
                    break
                await asyncio.sleep(0.1)
