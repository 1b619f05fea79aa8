"""Applies batches of sip-edge reports: one atomic Lua step per report.

Reads: entries of `cc:{t}:reports` (through bus.StreamConsumer). Writes: nothing itself; the Lua
steps change Redis state and append commands (`cc:{t}:commands:<edge>`) and events (`cc:{t}:events`).
Parked reports are acknowledged or dead-lettered (`cc:{t}:dead`) through the consumer.

Each report's `data` goes to its Lua step as the bytes read from the stream (`Entry.raw`): the
step unpacks it itself, so nothing here packs it again, whatever the retries.

Reports of one call must be applied in order (each carries `seq`). A batch goes to Redis in one
pipeline, in stream order: each report is still its own atomic step, and Redis runs them in the
order sent, so the reports of one call keep their order.

A report whose predecessor is not applied yet comes back OUT_OF_ORDER: another replica is applying
the predecessor right now, it is late, or it never comes (a report for a call nobody knows).
Nothing waits for it inside the batch, so no other call is held up: it is *parked* (verdict RETRY,
left pending) and `retry_parked`, a loop of its own, applies the parked reports of each call again
in seq order, soon after a report of that call was applied and otherwise with a growing pause,
acknowledging each once applied. A report still out of order `out_of_order_max_ms` after it was
parked is dead-lettered with the reason (unknown call, or the seq it waits for). While parked, the
entries stay claimed by this consumer (XCLAIM JUSTID, not counted as a delivery), so no other
replica takes them; should this one die, another reclaims and parks them. The per-call sequence
check in Lua keeps the order and makes a second application a harmless DUPLICATE.

A report whose step fails (FAILED: a Lua error, a bad config value, a key of the wrong type) is
that report's verdict alone: the rest of the batch goes on. A fault may be mended meanwhile (one
found before the step's first write left no trace; after a half-way failure the redelivery ends
the call), so such a report is retried up to `max_failures` times; anything else (the report
done with, a payload Lua cannot read) is dead-lettered at once, with the step's reason.

Log lines about one report carry its `entry_id` and `call_id` through the log context
(`callcenter.bus.entry_context`), not as arguments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from callcenter.bus import ACK, RETRY, Outcome, Verdict, entry_context
from callcenter.contract.codec import Entry
from callcenter.contract.reports import REPORTS, CallEnded
from callcenter.metrics import observe_since_entry
from callcenter.redis import REDIS_DOWN
from callcenter.store import RC, Result, Store

log = structlog.get_logger(__name__)

OUT_OF_ORDER_MAX_MS = 30_000   # parked this long without its predecessor: dead-lettered
PARK_RETRY_MIN_S = 0.01        # first pause between retries of the parked reports
PARK_RETRY_MAX_S = 0.5         # longest pause; keep it well under the consumer's claim_idle_ms


class Settler(Protocol):
    """What the handler needs of its consumer to settle parked entries outside a batch."""

    async def keep_claimed(self, ids: Sequence[str]) -> set[str]: ...

    async def ack(self, *ids: str) -> None: ...

    async def dead_letter(self, entry_id: str, fields: Mapping[Any, Any], reason: str) -> None: ...


@dataclass(slots=True)
class Parked:
    """An out-of-order report waiting for its predecessor, and since when."""

    entry: Entry
    since: float  # event-loop time when it was parked


class ReportHandler:
    """Applies a batch of reports, one atomic Lua step each, and says per entry whether to ack,
    retry or dead-letter it; parks out-of-order reports and retries them in a loop of its own."""

    def __init__(self, store: Store, *, out_of_order_max_ms: int = OUT_OF_ORDER_MAX_MS,
                 retry_max_s: float = PARK_RETRY_MAX_S, settler: Settler | None = None,
                 max_failures: int = 3) -> None:
        self.store = store
        self.out_of_order_max_s = out_of_order_max_ms / 1000
        self.retry_max_s = retry_max_s
        self.settler = settler  # the consumer; set after both are built
        # kept below the consumer's max_deliveries, so the dead letter says why the step failed
        self.max_failures = max_failures
        self._failures: dict[str, int] = {}  # entry id -> failed tries seen by this replica
        self.applied: dict[str, int] = {rc.name: 0 for rc in RC}
        self._parked: dict[str, list[Parked]] = {}  # call id -> its parked reports, by seq
        self._wake = asyncio.Event()

    @property
    def parked(self) -> int:
        return sum(len(g) for g in self._parked.values())

    async def __call__(self, entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        reports: list[Entry] = []
        for entry in entries:
            if entry.type not in REPORTS:
                verdicts[entry.id] = Verdict(Outcome.DEAD, f"not a report: {entry.type}")
            else:
                reports.append(entry)
                if entry.type == CallEnded.TYPE:   # a hop of agent free -> ring (bench/free_to_ring.py)
                    log.debug("report.call_ended_read", call_id=entry.data.get("call_id"))
        if not reports:
            return verdicts
        # through the consumer when it can (one send for the batch, its acknowledgement and the next read)
        ride = getattr(self.settler, "ride", None)
        results = await self.store.apply_reports([(e.type, e.id, e.raw) for e in reports], send=ride)
        stopped: set[str] = set()  # calls with a report that will not be acked now
        for entry, res in zip(reports, results, strict=True):
            call_id = entry.data["call_id"]
            self.applied[res.rc.name] += 1
            if call_id in stopped:
                verdicts[entry.id] = RETRY  # cannot be applied before its predecessor
            elif res.rc is RC.OUT_OF_ORDER:
                self._park(entry)
                verdicts[entry.id] = RETRY
            else:
                if res.rc is RC.OK or res.rc is RC.DUPLICATE:  # the common case: nothing to log
                    if self._failures:
                        self._failures.pop(entry.id, None)
                    verdicts[entry.id] = ACK
                else:
                    with entry_context(entry):
                        verdicts[entry.id] = self._verdict(entry, res)
                if verdicts[entry.id].outcome is not Outcome.ACK:
                    stopped.add(call_id)
                elif call_id in self._parked:
                    self._wake.set()  # its parked successor may apply now
        now_s = time.time()  # one clock read per batch: report written -> its step applied
        for entry in reports:
            if verdicts[entry.id].outcome is Outcome.ACK:
                observe_since_entry("report_to_decision", entry.id, now_s)
        return verdicts

    def _park(self, entry: Entry) -> None:
        group = self._parked.setdefault(entry.data["call_id"], [])
        if any(p.entry.id == entry.id for p in group):
            return  # delivered again while parked
        group.append(Parked(entry, asyncio.get_running_loop().time()))
        group.sort(key=lambda p: p.entry.data.get("seq", 0))
        with entry_context(entry):
            log.info("report.parked", type=entry.type, seq=entry.data.get("seq"))

    async def retry_parked(self, stop: asyncio.Event) -> None:
        """Loop until `stop`: retry the parked reports, pausing longer while nothing moves."""
        delay = PARK_RETRY_MIN_S
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wake.clear()
            if stop.is_set():
                return
            try:
                moved = await self.retry_once() if self._parked else False
            except REDIS_DOWN as exc:  # waited out; the parked reports stay pending meanwhile
                log.warning("report.parked_retry_failed", error=repr(exc))
                moved = False
            delay = PARK_RETRY_MIN_S if moved else min(delay * 2, self.retry_max_s)

    async def retry_once(self) -> bool:
        """One pass over the parked reports: the first of each call is applied again, all in one
        pipeline, as long as some call moves on. True if any report was settled."""
        assert self.settler is not None, "retry_parked needs the consumer (handler.settler)"
        pending = await self.settler.keep_claimed([p.entry.id for g in self._parked.values() for p in g])
        for call_id in list(self._parked):
            # acknowledged by another replica (or trimmed) meanwhile: nothing left to do here
            self._parked[call_id] = [p for p in self._parked[call_id] if p.entry.id in pending]
            if not self._parked[call_id]:
                del self._parked[call_id]
        settled = False
        calls = list(self._parked)
        while calls:
            heads = [self._parked[c][0] for c in calls]
            results = await self.store.apply_reports([(p.entry.type, p.entry.id, p.entry.raw) for p in heads])
            moved: list[str] = []
            now = asyncio.get_running_loop().time()
            for call_id, head, res in zip(calls, heads, results, strict=True):
                self.applied[res.rc.name] += 1
                with entry_context(head.entry):
                    if res.rc is not RC.OUT_OF_ORDER:
                        verdict = self._verdict(head.entry, res)
                    elif now - head.since >= self.out_of_order_max_s:
                        verdict = Verdict(Outcome.DEAD, await self._out_of_order_reason(head))
                    else:
                        continue
                await self._settle(head.entry, verdict)
                group = self._parked[call_id]
                group.pop(0)
                if group:
                    moved.append(call_id)
                else:
                    del self._parked[call_id]
                settled = True
            calls = moved
        return settled

    async def _settle(self, entry: Entry, verdict: Verdict) -> None:
        assert self.settler is not None
        if verdict.outcome is Outcome.ACK:
            await self.settler.ack(entry.id)
        else:
            fields = {"type": entry.type, "v": str(entry.v), "data": entry.raw}
            await self.settler.dead_letter(entry.id, fields, verdict.reason)

    async def _out_of_order_reason(self, parked: Parked) -> str:
        call_id = parked.entry.data["call_id"]
        seq = parked.entry.data.get("seq")
        waited = f"{self.out_of_order_max_s:g} s"
        call = await self.store.call(call_id)
        if call is None:
            return f"out of order: unknown call {call_id} (seq {seq}); no arrival within {waited}"
        return (f"out of order: call {call_id} is at seq {call.get('seq', '0')}, this report has seq {seq}; "
                f"its predecessor did not come within {waited}")

    def _verdict(self, entry: Entry, res: Result) -> Verdict:
        if res.rc is RC.FAILED:
            return self._failed(entry, res)
        self._failures.pop(entry.id, None)
        if res.rc is RC.INVALID:
            return Verdict(Outcome.DEAD, f"invalid report: {res.detail}")
        if res.rc is RC.STALE:
            log.info("report.stale", type=entry.type)
        return ACK

    def _failed(self, entry: Entry, res: Result) -> Verdict:
        """A step that could not be applied: retried while its fault may be mended, else, or after
        `max_failures` tries, dead-lettered with the step's reason."""
        log.error("report.failed", type=entry.type, reason=res.detail[:500])
        if res.detail.startswith(("preflight:", "half-way:")):
            tries = self._failures.get(entry.id, 0) + 1
            if tries < self.max_failures:
                if len(self._failures) >= 10_000:  # entries taken over by other replicas: forget
                    self._failures.clear()
                self._failures[entry.id] = tries
                return RETRY
        self._failures.pop(entry.id, None)
        return Verdict(Outcome.DEAD, f"step failed: {res.detail}")
