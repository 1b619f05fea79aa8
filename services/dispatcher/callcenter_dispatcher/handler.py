"""Applies batches of sip-edge reports: one atomic Lua step per report.

Reads: entries of `cc:{t}:reports` (through bus.StreamConsumer). Writes: nothing itself; the Lua
steps change Redis state and append commands (`cc:{t}:commands:<edge>`) and events (`cc:{t}:events`).

Reports of one call must be applied in order (each carries `seq`). Within a batch, the reports of
one call run one after another, different calls run concurrently. A report whose predecessor is
being applied by another dispatcher replica right now comes back OUT_OF_ORDER: it is retried here
for a short while, then left pending, to be reclaimed and retried later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import msgpack
import structlog

from callcenter.bus import ACK, RETRY, Outcome, Verdict
from callcenter.events import Entry
from callcenter.store import RC, REPORT_SCRIPTS, Store

log = structlog.get_logger(__name__)

OUT_OF_ORDER_BACKOFF_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class ReportHandler:
    def __init__(self, store: Store, concurrency: int = 50) -> None:
        self.store = store
        self._slots = asyncio.Semaphore(concurrency)
        self.applied: dict[str, int] = {rc.name: 0 for rc in RC}

    async def __call__(self, entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        by_call: dict[str, list[Entry]] = {}
        verdicts: dict[str, Verdict] = {}
        for entry in entries:
            if entry.type not in REPORT_SCRIPTS:
                verdicts[entry.id] = Verdict(Outcome.DEAD, f"not a report: {entry.type}")
                continue
            by_call.setdefault(entry.data["call_id"], []).append(entry)
        results = await asyncio.gather(*(self._apply_in_order(group) for group in by_call.values()))
        for group_verdicts in results:
            verdicts.update(group_verdicts)
        return verdicts

    async def _apply_in_order(self, group: list[Entry]) -> dict[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        async with self._slots:
            for i, entry in enumerate(group):
                verdict = await self._apply(entry)
                verdicts[entry.id] = verdict
                if verdict.outcome is not Outcome.ACK:
                    # later reports of this call cannot be applied before this one
                    for later in group[i + 1:]:
                        verdicts[later.id] = RETRY
                    break
        return verdicts

    async def _apply(self, entry: Entry) -> Verdict:
        payload = msgpack.packb(entry.data, use_bin_type=True)
        for delay in (*OUT_OF_ORDER_BACKOFF_S, None):
            res = await self.store.apply_report(entry.type, entry.id, payload)
            self.applied[res.rc.name] += 1
            if res.rc is not RC.OUT_OF_ORDER:
                break
            if delay is None:
                log.warning("report.out_of_order", entry_id=entry.id, type=entry.type,
                            call_id=entry.data.get("call_id"), seq=entry.data.get("seq"))
                return RETRY
            await asyncio.sleep(delay)
        if res.rc is RC.INVALID:
            return Verdict(Outcome.DEAD, f"invalid report: {res.detail}")
        if res.rc is RC.STALE:
            log.info("report.stale", entry_id=entry.id, type=entry.type, call_id=entry.data.get("call_id"))
        return ACK
