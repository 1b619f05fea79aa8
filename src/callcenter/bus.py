"""Redis streams: the consumer contract shared by every service.

Consumer contract (dispatcher, cdr-writer, any analytics consumer built on it):
- the consumer group is created idempotently (MKSTREAM; BUSYGROUP is fine), from the start of
  the stream so nothing written before the first start is missed;
- reads are bounded (COUNT) and blocking for at most `block_ms`, so a stop request is seen fast;
- a consumer that wants only some entry types names them (`types`): the others are acknowledged
  with the batch, never decoded nor handed to the handler (an entry without a `type` field is
  decoded, and dead-lettered as undecodable);
- an entry is acknowledged only after the handler says its effect is durable; the XACK goes in
  one send with the next XREADGROUP, on a connection the consumer keeps (`callcenter.stream_read`;
  one round trip per batch instead of two), or on its own before any other Redis work of the loop
  (a reclaim, a held batch) and at a stop; a consumer given `wait` (CC_REDIS_WAIT_REPLICAS)
  sends each XACK in a transaction of its own followed by WAIT (`callcenter.redis_durability`);
- a handler may send its own commands for a batch through the consumer (`ride`: the dispatcher's
  FCALLs): they go first in that same send, with the acknowledgement of the batch before and the
  read of the next batch (blocking at most RIDE_BLOCK_MS), whose reply the next loop takes. The
  batch's own entries are then acknowledged with the send after it: one send per batch;
- with `linger_ms`, a read that found fewer than `batch` entries is followed by a pause of that
  length before the next read, so a consumer that can wait (the cdr-writer) reads, handles and
  acknowledges fewer, larger batches; its acknowledgements wait for the next read too (an entry
  stays pending up to `linger_ms` after its effect is durable); a stop request cuts the pause;
- entries left pending by a dead consumer are reclaimed with XAUTOCLAIM (following its cursor)
  once idle for `claim_idle_ms`;
- an entry that cannot be decoded, that the handler rejects, or that was delivered
  `max_deliveries` times goes to the dead-letter stream with the reason, then is acknowledged:
  never silently dropped, never retried forever;
- a handler that cannot make an effect durable for a reason outside the entries (its database is
  down) answers BACKOFF: the consumer keeps those entries, stops reading new ones (backpressure),
  and offers the same entries again with exponential back-off, without counting deliveries; it
  keeps them claimed (XCLAIM JUSTID) so no other consumer takes them meanwhile;
- an entry found deleted while pending (trimmed away) is logged (`consumer.entry_lost`) and
  acknowledged: nothing is left to handle;
- a Redis outage (connection refused, a restart) is waited out with back-off; a consumer group
  lost with a Redis that restarted empty is created again;
- the entries pending under the consumer's own name are read once, oldest first, at a start (a
  previous process of that name read them and died) and after a Redis error (a read Redis ran
  whose reply was lost with the connection), before any new entry: they do not wait for a reclaim;
- `request_stop()` (called by a signal handler) only flips a flag: the loop finishes the batch
  in hand, acknowledges it, and returns.

Logs never carry a payload whole: a dead letter's log line has the reason cut to `LOG_EXCERPT`
characters and the payload's size (`payload_bytes`); the dead-letter record keeps the original
fields whole, with the reason cut to `DEAD_REASON_MAX`.

Log context: around the handling of a batch, `stream` is bound with `structlog.contextvars`, and
`entry_id` and `call_id` (when its data has one) when the batch is one entry; a handler binds
them per entry of a larger batch with `entry_context(entry)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from callcenter.contract.codec import DecodeError, Entry, decode
from callcenter.logs import excerpt
from callcenter.metrics import DEAD_LETTERS, STREAM_ENTRIES
from callcenter.redis import REDIS_DOWN, text
from callcenter.redis_durability import ReplicaWait, note_wait, wait_after
from callcenter.stream_read import StreamReader

log = structlog.get_logger(__name__)

DEAD_MAXLEN = 100_000
# a reason can quote the payload (a decode error names what it found): logged up to this many
# characters, stored in the dead-letter record up to DEAD_REASON_MAX
LOG_EXCERPT = 200
DEAD_REASON_MAX = 1000
# the longest a read sent with a batch's commands (`StreamConsumer.ride`) blocks: the batch's
# acknowledgement waits for the next send, so when nothing comes it goes with a read of its own soon
RIDE_BLOCK_MS = 50


def _size(fields: Mapping[Any, Any]) -> int:
    return sum(len(k) + len(v if isinstance(v, bytes | str) else str(v)) for k, v in fields.items())


class Outcome(enum.Enum):
    """What the consumer does with an entry after its handler ran."""

    ACK = "ack"          # done and durable
    RETRY = "retry"      # leave pending: redelivered after claim_idle_ms (counts as a delivery)
    BACKOFF = "backoff"  # a dependency is down: offer the same entry again later (not a delivery)
    DEAD = "dead"        # cannot ever succeed: dead-letter it


@dataclass(frozen=True, slots=True)
class Verdict:
    """A handler's outcome for one entry, with the reason for a dead letter."""

    outcome: Outcome
    reason: str = ""


ACK = Verdict(Outcome.ACK)
RETRY = Verdict(Outcome.RETRY)
BACKOFF = Verdict(Outcome.BACKOFF)


Handler = Callable[[Sequence[Entry]], Awaitable[Mapping[str, Verdict]]]


class _Bound:
    """`structlog.contextvars.bound_contextvars` for the hot path: the keys are set on entry and
    reset to what they were (a value, or unbound) on exit, through the tokens of their context
    variables, without a generator nor a copy of the whole context per use."""

    __slots__ = ("kw", "tokens")

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.tokens: Mapping[str, Any] = {}

    def __enter__(self) -> None:
        self.tokens = structlog.contextvars.bind_contextvars(**self.kw)

    def __exit__(self, *exc: object) -> None:
        structlog.contextvars.reset_contextvars(**self.tokens)


def entry_context(entry: Entry) -> contextlib.AbstractContextManager[None]:
    """Bind the entry's id and, when its data has one, its call's id to the log context."""
    call_id = entry.data.get("call_id")
    if call_id is None:
        return _Bound(entry_id=entry.id)
    return _Bound(entry_id=entry.id, call_id=call_id)


class StreamConsumer:
    """One consumer of a consumer group; `run()` loops until `request_stop()`."""

    def __init__(self, redis: Redis, *, stream: str, group: str, consumer: str, handler: Handler,
                 dead_stream: str, batch: int = 64, block_ms: int = 1000, claim_idle_ms: int = 10_000,
                 max_deliveries: int = 5, backoff_max_s: float = 5.0,
                 types: Collection[str] | None = None, linger_ms: int = 0,
                 wait: ReplicaWait | None = None) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.dead_stream = dead_stream
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.linger_s = linger_ms / 1000
        # WAIT for replicas with each XACK (callcenter.redis_durability): the handler's writes were
        # made before it, so a replica that has the XACK has them too
        self.wait = wait
        # XACK and the next XREADGROUP in one send, on a connection of the consumer's own
        # (callcenter.stream_read); a Redis Cluster client sends the XACK alone, and so does a
        # consumer that WAITs (in a transaction on the master of the stream's slot)
        self._reader = (None if isinstance(redis, RedisCluster) or wait is not None
                        else StreamReader(redis, stream, group, consumer))
        # the stream field as redis-py returns it (bytes): compared before any decoding
        self._wanted = None if types is None else frozenset(t.encode() for t in types)
        self.backoff_max_s = min(backoff_max_s, claim_idle_ms / 2000)  # held entries stay claimed
        self._stop = asyncio.Event()
        self._claim_cursor = "0-0"
        self._held: dict[str, tuple[Entry, Mapping[Any, Any]]] = {}
        # handled (durably), not acknowledged yet: sent with the next read, or first when Redis is
        # back if the XACK found it down, so they are not left pending until the next reclaim
        self._unacked: list[str] = []
        # `ride`: allowed while the handler runs on a batch read with ">" (not at a start, a
        # reclaim or a held entry's retry), once a batch; the acknowledgements sent with that read
        self._ride_ok = False
        self._riding_acks: list[str] = []
        self._backoff_s = 0.0
        # a read failed on a Redis error: its entries may have been delivered all the same
        self._reread_own = False
        self._last_id = "0"  # the last entry id a read gave
        self.handled = 0
        self.dead_lettered = 0
        self.lost = 0
        # the series exist at 0 from the start: a rule on increase() sees the first dead letter
        DEAD_LETTERS.labels(stream)
        self._entries_handled = STREAM_ENTRIES.labels(stream, group)  # the child, looked up once

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        await self._until_redis(self.ensure_group)
        # entries this consumer name read before a restart and never acknowledged come first
        await self._until_redis(self._read_own)
        claim_every = max(self.claim_idle_ms / 2000, 0.05)
        loop = asyncio.get_running_loop()
        next_claim = loop.time()
        while not self.stopping:
            try:
                if self._held:
                    await self._ack_now([])
                    await self._retry_held()
                    continue
                if self._reread_own:
                    await self._ack_now([])
                    await self._read_own()
                    self._reread_own = False
                if loop.time() >= next_claim:
                    await self._ack_now([])
                    await self._reclaim()
                    next_claim = loop.time() + claim_every
                read = await self._read(">")
                if self.linger_s and 0 < read < self.batch:
                    await self._linger()
            except REDIS_DOWN as exc:
                log.warning("consumer.redis_unavailable", stream=self.stream, error=repr(exc))
                self._reread_own = True
                await self._pause()
            except ResponseError as exc:
                if str(exc).startswith("UNBLOCKED"):
                    # our master became a replica while we were blocked on it (a Sentinel
                    # failover): the client finds the new master on the next read
                    log.warning("consumer.redis_unavailable", stream=self.stream, error=repr(exc))
                    await self._pause()
                    continue
                if "NOGROUP" not in str(exc):
                    raise
                # Redis came back without our group (restarted empty): start again from its start
                log.warning("consumer.group_lost", stream=self.stream, group=self.group)
                await self._until_redis(self.ensure_group)
        if self._reader is not None and self._reader.in_flight:
            # the read sent with the last batch: its entries are handled rather than left pending
            try:
                await self._read(">")
            except (*REDIS_DOWN, ResponseError) as exc:
                log.warning("consumer.redis_unavailable", stream=self.stream, error=repr(exc))
        if self._unacked:  # the batch in hand at the stop
            try:
                await self._ack_now([])
            except REDIS_DOWN as exc:  # left pending: reclaimed, or read again at a restart
                log.warning("consumer.redis_unavailable", stream=self.stream, error=repr(exc))
        if self._reader is not None:
            await self._reader.close()
        log.info("consumer.stopped", stream=self.stream, group=self.group, handled=self.handled)

    async def _read_own(self) -> None:
        """Read once through the entries pending under this consumer's name, oldest first, from
        the id after the last one read: those a previous process of this name read and never
        acknowledged (at a start), or those whose delivery Redis made but whose reply never came
        back (a connection cut, a redis-server stopped between running a read and sending its
        reply): without this they would wait for a reclaim, `claim_idle_ms` later. An entry kept
        pending on purpose (a handler's RETRY, the dispatcher's parked reports) is offered once
        more, not in a loop."""
        cursor = "0"
        while not self.stopping and await self._read(cursor):
            cursor = self._last_id

    async def _linger(self) -> None:
        """Let entries gather before the next read; a stop request cuts it short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=self.linger_s)

    async def _until_redis(self, op: Callable[[], Awaitable[Any]]) -> Any:
        """Run `op`, waiting out a Redis outage with back-off (None if asked to stop meanwhile)."""
        while not self.stopping:
            try:
                result = await op()
            except REDIS_DOWN as exc:
                log.warning("consumer.redis_unavailable", stream=self.stream, error=repr(exc))
                await self._pause()
            else:
                self._backoff_s = 0.0
                return result
        return None

    async def _pause(self) -> None:
        """Sleep with exponential back-off; a stop request cuts it short."""
        self._backoff_s = min(max(self._backoff_s * 2, 0.05), self.backoff_max_s)
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=self._backoff_s)
        except TimeoutError:
            pass

    async def _retry_held(self) -> None:
        """Offer the held (BACKOFF) entries again, after a pause, keeping them claimed meanwhile."""
        await self._pause()
        if self.stopping:
            return  # they stay pending under this consumer: reclaimed, or read again at restart
        still_ids = await self.keep_claimed(list(self._held))
        held = [(entry, raw) for entry_id, (entry, raw) in self._held.items() if entry_id in still_ids]
        self._held.clear()
        if held:
            await self._handle([e for e, _ in held], {e.id: raw for e, raw in held})
        if not self._held:
            self._backoff_s = 0.0

    async def keep_claimed(self, ids: Sequence[str]) -> set[str]:
        """Claim pending entries again for this consumer (XCLAIM JUSTID: not a delivery), so no
        other consumer reclaims them while this one still works on them; returns those still pending
        (an entry acknowledged or trimmed meanwhile is not)."""
        if not ids:
            return set()
        still = await self.redis.xclaim(self.stream, self.group, self.consumer, min_idle_time=0,
                                        message_ids=list(ids), justid=True)
        return {text(i) for i in still}

    async def ack(self, *ids: str) -> None:
        """Acknowledge entries a handler settled outside a batch (see ReportHandler's parked reports)."""
        if ids:
            await self._xack(ids)
            self.handled += len(ids)

    async def _read(self, start: str) -> int:
        block = None if start == "0" else self.block_ms
        resp: Any
        if self._reader is not None and self._reader.in_flight:  # sent with the last batch (ride)
            ids, self._riding_acks = self._riding_acks, []
            try:
                resp = await self._reader.finish_read()
            except BaseException:
                self._unacked = [*ids, *self._unacked]  # acknowledged again: harmless
                raise
            if ids:
                self._count_acked(len(ids))
        elif self._reader is not None:
            ids = self._unacked  # kept on a failure: acknowledged when Redis is back
            resp = await self._reader.ack_and_read(ids, start, self.batch, block)
            self._unacked = []
            if ids:
                self._count_acked(len(ids))
        else:
            await self._ack_now([])  # the entries handled since the last read first: "0" must not find them
            # RESP2 reply: [[stream, [(id, fields), ...]]] (the stubs describe RESP3's map)
            resp = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: start},
                                               count=self.batch, block=block)
        if not resp:
            return 0
        entries = resp[0][1]
        if not entries:
            return 0
        self._last_id = text(entries[-1][0])
        self._ride_ok = start == ">"
        try:
            await self._process(entries)
        finally:
            self._ride_ok = False
        return len(entries)

    async def ride(self, commands: list[tuple[Any, ...]]) -> list[Any] | None:
        """Send a handler's `commands` (`Store.apply_reports`'s FCALLs) in one write with the
        acknowledgement of what was handled so far and the next read, and answer their replies;
        None when they cannot go that way now (the handler sends them itself): no reader of its own
        (Redis Cluster, WAIT), a stop, not a batch read with ">", or once already for this batch.
        The entries of this batch are acknowledged with the next send; the read waits at most
        RIDE_BLOCK_MS, so when nothing follows they are acknowledged soon by a read of their own."""
        if not self._ride_ok or self._reader is None or self.stopping or self._reader.in_flight:
            return None
        self._ride_ok = False
        ids, self._unacked = self._unacked, []
        try:
            replies = await self._reader.send_with_read(commands, ids, ">", self.batch,
                                                        min(self.block_ms, RIDE_BLOCK_MS))
        except BaseException:
            self._unacked = [*ids, *self._unacked]
            raise
        self._riding_acks = ids
        return replies

    def _count_acked(self, n: int) -> None:
        self.handled += n
        self._entries_handled.inc(n)

    async def _reclaim(self) -> None:
        """Take over entries idle in other (dead) consumers, following XAUTOCLAIM's cursor."""
        while not self.stopping:
            resp = await self.redis.xautoclaim(self.stream, self.group, self.consumer,
                                               min_idle_time=self.claim_idle_ms,
                                               start_id=self._claim_cursor, count=self.batch)
            cursor, claimed = text(resp[0]), resp[1]
            deleted = resp[2] if len(resp) > 2 else []
            if deleted:
                # trimmed from the stream while pending: nothing left to handle, clear the PEL
                lost = [text(i) for i in deleted]
                log.warning("consumer.entry_lost", stream=self.stream, group=self.group, entry_ids=lost)
                await self.redis.xack(self.stream, self.group, *deleted)
                self.lost += len(lost)
            claimed = [c for c in claimed if c and c[1] is not None]
            if claimed:
                log.info("consumer.reclaimed", stream=self.stream, count=len(claimed))
                await self._process(claimed, reclaimed=True)
            self._claim_cursor = cursor
            if cursor == "0-0":
                return

    async def _deliveries(self, entry_id: str) -> int:
        info = await self.redis.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return int(info[0]["times_delivered"]) if info else 0

    def _unwanted(self, fields: Mapping[Any, Any]) -> bool:
        if self._wanted is None:
            return False
        etype = fields.get(b"type", fields.get("type"))
        if etype is None:
            return False  # no type: decoded, hence dead-lettered
        return (etype if isinstance(etype, bytes) else str(etype).encode()) not in self._wanted

    async def _process(self, raw_entries: Sequence[Any], reclaimed: bool = False) -> None:
        good: list[Entry] = []
        raw_by_id: dict[str, Mapping[Any, Any]] = {}
        skipped: list[str] = []
        for raw_id, fields in raw_entries:
            entry_id = text(raw_id)
            if self._unwanted(fields):
                skipped.append(entry_id)
                continue
            raw_by_id[entry_id] = fields
            if reclaimed and await self._deliveries(entry_id) > self.max_deliveries:
                await self.dead_letter(entry_id, fields, f"delivered more than {self.max_deliveries} times")
                continue
            try:
                good.append(decode(fields, entry_id))
            except DecodeError as exc:
                await self.dead_letter(entry_id, fields, f"undecodable: {exc}")
        if good:
            await self._handle(good, raw_by_id, skipped)
        elif skipped:
            self._unacked += skipped  # sent with the next read

    async def _handle(self, good: list[Entry], raw_by_id: Mapping[str, Mapping[Any, Any]],
                      skipped: Sequence[str] = ()) -> None:
        """Run the handler on `good` and act on its verdicts; `skipped` (entries of unwanted types)
        are acknowledged with the batch."""
        try:
            if len(good) == 1:
                call_id = good[0].data.get("call_id")
                bound = _Bound(stream=self.stream, entry_id=good[0].id) if call_id is None else \
                    _Bound(stream=self.stream, entry_id=good[0].id, call_id=call_id)
            else:
                bound = _Bound(stream=self.stream)
            with bound:
                verdicts = await self.handler(good)
        except Exception as exc:  # the handler's failure must not kill the loop: leave them pending
            log.exception("consumer.handler_failed", stream=self.stream, count=len(good),
                          error=excerpt(repr(exc), LOG_EXCERPT))
            if skipped:
                self._unacked += skipped
            await asyncio.sleep(0.1)
            return
        to_ack: list[str] = list(skipped)
        for entry in good:
            verdict = verdicts.get(entry.id, RETRY)
            if verdict.outcome is Outcome.ACK:
                to_ack.append(entry.id)
            elif verdict.outcome is Outcome.DEAD:
                await self.dead_letter(entry.id, raw_by_id[entry.id], verdict.reason)
            elif verdict.outcome is Outcome.BACKOFF:
                self._held[entry.id] = (entry, raw_by_id[entry.id])
        self._unacked += to_ack  # sent with the next read (see run)

    async def _ack_now(self, ids: Sequence[str]) -> None:
        """Acknowledge `ids` together with those not acknowledged yet (handled since the last read,
        or whose acknowledgement failed earlier); on a Redis outage they are all kept for the next
        try (their effect is durable already)."""
        ids = [*self._unacked, *ids]
        self._unacked = []
        if not ids:
            return
        try:
            await self._xack(ids)
        except REDIS_DOWN:
            self._unacked = ids
            raise
        self._count_acked(len(ids))

    async def _xack(self, ids: Sequence[Any]) -> None:
        if self.wait is None:
            await self.redis.xack(self.stream, self.group, *ids)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, *ids)
            wait_after(pipe, self.wait)
            await pipe.execute()
            note_wait(pipe, self.wait, f"{self.group}_ack", stream=self.stream, count=len(ids))

    async def dead_letter(self, entry_id: str, fields: Mapping[Any, Any], reason: str) -> None:
        record: dict[Any, Any] = {"stream": self.stream, "group": self.group, "entry_id": entry_id,
                                  "error": excerpt(reason, DEAD_REASON_MAX)}
        for k, v in fields.items():
            record[f"orig_{text(k)}"] = v
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, record, maxlen=DEAD_MAXLEN, approximate=True)
            pipe.xack(self.stream, self.group, entry_id)
            wait_after(pipe, self.wait)
            await pipe.execute()
            note_wait(pipe, self.wait, f"{self.group}_ack", stream=self.stream, count=1)
        self.dead_lettered += 1
        DEAD_LETTERS.labels(self.stream).inc()
        log.warning("consumer.dead_letter", stream=self.stream, entry_id=entry_id, error=excerpt(reason, LOG_EXCERPT),
                    payload_bytes=_size(fields))
