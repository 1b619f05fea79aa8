"""Applies batches of sip-edge reports: one atomic Lua step per report.

Reads: entries of `cc:{t}:reports` (through bus.StreamConsumer). Writes: nothing itself; the Lua
steps change Redis state and append commands (`cc:{t}:commands:<edge>`) and events (`cc:{t}:events`).

Each report's `data` goes to its Lua step as the bytes read from the stream (`Entry.raw`): the
step unpacks it itself, so nothing here packs it again, whatever the retries.

Reports of one call must be applied in order (each carries `seq`). A batch goes to Redis in one
pipeline, in stream order: each report is still its own atomic step, and Redis runs them in the
order sent, so the reports of one call keep their order. A report whose predecessor is being
applied by another dispatcher replica right now comes back OUT_OF_ORDER (and so do the later
reports of its call in the batch, with no effect): those are retried here, in order, for a short
while, then left pending, to be reclaimed and retried later.

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
from collections.abc import Mapping, Sequence

import structlog

from callcenter.bus import ACK, RETRY, Outcome, Verdict, entry_context
from callcenter.contract.codec import Entry
from callcenter.contract.reports import REPORTS
from callcenter.store import RC, Result, Store

log = structlog.get_logger(__name__)

OUT_OF_ORDER_BACKOFF_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class ReportHandler:
    """Applies a batch of reports, one atomic Lua step each, and says per entry whether to ack,
    retry or dead-letter it."""

    def __init__(self, store: Store, concurrency: int = 50, max_failures: int = 3) -> None:
        self.store = store
        # kept below the consumer's max_deliveries, so the dead letter says why the step failed
        self.max_failures = max_failures
        self._failures: dict[str, int] = {}  # entry id -> failed tries seen by this replica
        self._slots = asyncio.Semaphore(concurrency)
        self.applied: dict[str, int] = {rc.name: 0 for rc in RC}

    async def __call__(self, entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        reports: list[Entry] = []
        for entry in entries:
            if entry.type not in REPORTS:
                verdicts[entry.id] = Verdict(Outcome.DEAD, f"not a report: {entry.type}")
            else:
                reports.append(entry)
        if not reports:
            return verdicts
        results = await self.store.apply_reports([(e.type, e.id, e.raw) for e in reports])
        again: dict[str, list[Entry]] = {}  # per call: from its first report that came back OUT_OF_ORDER
        stopped: set[str] = set()  # calls with a report that will not be acked now
        for entry, res in zip(reports, results, strict=True):
            call_id = entry.data["call_id"]
            self.applied[res.rc.name] += 1
            if call_id in again:
                again[call_id].append(entry)
            elif call_id in stopped:
                verdicts[entry.id] = RETRY  # cannot be applied before its predecessor
            elif res.rc is RC.OUT_OF_ORDER:
                again[call_id] = [entry]
            else:
                with entry_context(entry):
                    verdicts[entry.id] = self._verdict(entry, res)
                if verdicts[entry.id].outcome is not Outcome.ACK:
                    stopped.add(call_id)
        if again:
            for group_verdicts in await asyncio.gather(*(self._apply_in_order(g, waited=True)
                                                         for g in again.values())):
                verdicts.update(group_verdicts)
        return verdicts

    async def _apply_in_order(self, group: list[Entry], waited: bool = False) -> dict[str, Verdict]:
        """Apply the reports of one call one by one; `waited`: the first one came back OUT_OF_ORDER
        already, so its retries start with a pause."""
        verdicts: dict[str, Verdict] = {}
        async with self._slots:
            for i, entry in enumerate(group):
                with entry_context(entry):
                    verdict = await self._apply(entry, waited=waited and i == 0)
                verdicts[entry.id] = verdict
                if verdict.outcome is not Outcome.ACK:
                    # later reports of this call cannot be applied before this one
                    for later in group[i + 1:]:
                        verdicts[later.id] = RETRY
                    break
        return verdicts

    async def _apply(self, entry: Entry, waited: bool = False) -> Verdict:
        if waited:
            await asyncio.sleep(OUT_OF_ORDER_BACKOFF_S[0])
        for delay in (*OUT_OF_ORDER_BACKOFF_S, None):
            res = await self.store.apply_report(entry.type, entry.id, entry.raw)
            self.applied[res.rc.name] += 1
            if res.rc is not RC.OUT_OF_ORDER:
                break
            if delay is None:
                log.warning("report.out_of_order", type=entry.type, seq=entry.data.get("seq"))
                return RETRY
            await asyncio.sleep(delay)
        return self._verdict(entry, res)

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
