"""The checkpoint writes of one report batch, planned once: per call at most one HSET and one HDEL.

A batch (publisher.py) carries the reports and checkpoint facts of one or more reactor turns, and
one call often has several of them in it (its arrival and the `uas` of its INVITE; a report and
the checkpoint of the change it reports). Applied in one MULTI, only the last value of each field
is ever seen, so the batch writes each call's fields once: the last `seq` and `phase`, the last
legs, and so on. Across batches, a field is written only when its value changed since this
process last wrote it, and deleted (HDEL) only when it is there: `_known` holds, per call, a hash
(Python's, of the text written) of each field's value as Redis holds it, or None for a field it
does not have; a call this process created (its `call_arrived` went through here) is known to have
none of them at first. Between batches each call's entry is one tuple in `OPTIONAL`'s order (a dict
per call was ~0.5 KiB for each call up). A field of an adopted call is written (or deleted) the first time as before,
and known from then on. seq and phase change with every report and are always written.

Expiries: the call's hash gets its EXPIRE once, with its arrival; the edge's index of calls
(`edge:<edge>:dialogs`) is given `ttl_s + renew_s` at most every `renew_s`, not at every arrival,
so that it still outlives the last call added by `ttl_s`; the first arrival after a failed batch
renews it again (Redis may have restarted empty).

The plan is made once per batch and sent as it is on every try (publisher.py); `applied` records it
in `_known` only once the batch is known to be in Redis, so a retry never skips a write that did not
land. Exactly-once and atomicity are the publisher's: the plan is commands for its MULTI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from callcenter.contract.reports import CallArrived, CallEnded, CommandRefused, Report
from callcenter.store.keys import Keys

# the checkpoint fields whose value a checkpoint fact sets or (None, empty) deletes
OPTIONAL = ("legs", "agent_id", "offer_id", "timers", "pending", "uas")
# set when given and never deleted: a call's last agent, and its last legs
_NEVER_DELETED = frozenset({"agent_id", "offer_id", "legs"})
# stored as they are; the others as JSON
_RAW = frozenset({"agent_id", "offer_id"})
# a field whose state in Redis is not known (`_known` has no entry for it)
_UNKNOWN = object()


@dataclass
class _Call:
    """What one batch does to one call's checkpoint hash."""

    sets: dict[str, Any] = field(default_factory=dict)
    dels: set[str] = field(default_factory=set)
    arrived: bool = False
    ended: bool = False


@dataclass
class CheckpointPlan:
    """The commands of one batch's checkpoints (for its MULTI), and what they leave in Redis."""

    commands: list[tuple[Any, ...]] = field(default_factory=list)
    known: dict[str, dict[str, int | None]] = field(default_factory=dict)   # per call, fields after the batch
    ended: list[str] = field(default_factory=list)
    index_renewed: bool = False


class CheckpointWriter:
    """Plans the checkpoint writes of the batches of one edge (the asyncio side only)."""

    def __init__(self, keys: Keys, edge_id: str, ttl_s: int, live: Callable[[str], bool] | None = None) -> None:
        self.keys = keys
        # whether a call's report stream is open here (the service's own record); a refusal of a call
        # that is not live ended in an earlier batch, whose DEL took its hash
        self.live = live if live is not None else _always
        self.edge_id = edge_id
        self.index = keys.edge_dialogs(edge_id)
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[object, ...]] = {}   # per call, `_packed`
        self._index_renewed_at: float | None = None

    @property
    def renew_s(self) -> float:
        """How often at most the index's TTL is renewed: a minute, or a tenth of a shorter TTL."""
        return min(60.0, self.ttl_s / 10)

    @property
    def index_ttl_s(self) -> int:
        return self.ttl_s + int(self.renew_s)

    def forget(self, call_id: str) -> None:
        """A call no longer this process's (handed to a peer): its fields are not known any more."""
        self._known.pop(call_id, None)

    def failed(self) -> None:
        """A batch failed: Redis may have lost what it held (a restart): renew the index at the next arrival."""
        self._index_renewed_at = None

    def plan(self, batch: list[Any]) -> CheckpointPlan:
        """The commands for the checkpoints of `batch` (reports and `DialogCheckpoint`s, in order)."""
        calls: dict[str, _Call] = {}
        views: dict[str, dict[str, int | None]] = {}
        for item in batch:
            if isinstance(item, Report):
                self._report(item, calls, views)
            else:
                self._checkpoint(item.call_id, item.data, calls, views)
        plan = CheckpointPlan()
        arrived = [call_id for call_id, c in calls.items() if c.arrived and not c.ended]
        ended = [call_id for call_id, c in calls.items() if c.ended]
        if arrived:
            plan.commands.append(("SADD", self.index, *arrived))
            now = time.monotonic()
            if self._index_renewed_at is None or now - self._index_renewed_at >= self.renew_s:
                plan.commands.append(("EXPIRE", self.index, self.index_ttl_s))
                plan.index_renewed = True
        for call_id, c in calls.items():
            if c.ended:
                continue
            key = self.keys.dialog(call_id)
            if c.dels:
                plan.commands.append(("HDEL", key, *sorted(c.dels)))
            if c.sets:
                plan.commands.append(("HSET", key, *(x for kv in c.sets.items() for x in kv)))
            if c.arrived:
                plan.commands.append(("EXPIRE", key, self.ttl_s))
            if call_id in views:
                plan.known[call_id] = views[call_id]
        if ended:
            plan.commands.append(("DEL", *(self.keys.dialog(call_id) for call_id in ended)))
            plan.commands.append(("SREM", self.index, *ended))
            plan.ended = ended
        return plan

    def applied(self, plan: CheckpointPlan) -> None:
        """`plan`'s batch is in Redis: what it wrote is what Redis holds."""
        self._known.update((call_id, _packed(view)) for call_id, view in plan.known.items())
        for call_id in plan.ended:
            self._known.pop(call_id, None)
        if plan.index_renewed:
            self._index_renewed_at = time.monotonic()

    def _view(self, call_id: str, views: dict[str, dict[str, int | None]]) -> dict[str, int | None]:
        """The call's fields as they will be after the batch so far (a field not in it: not known)."""
        view = views.get(call_id)
        if view is None:
            known = self._known.get(call_id)
            view = views[call_id] = {} if known is None else _unpacked(known)
        return view

    def _report(self, report: Report, calls: dict[str, _Call], views: dict[str, dict[str, int | None]]) -> None:
        if report.seq <= 0:
            return   # a refusal outside any call's stream
        c = calls.get(report.call_id)
        if c is None:
            if isinstance(report, CommandRefused) and not self.live(report.call_id):
                # a refusal after the end, in a later batch: an HSET would make the hash again,
                # with no EXPIRE (that came with the arrival): a key no one deletes
                return
            c = calls[report.call_id] = _Call()
        if c.ended:
            return   # a refusal after the end, in the same batch: the hash is deleted, not written again
        if isinstance(report, CallEnded):
            c.ended, c.sets, c.dels = True, {}, set()
            views.pop(report.call_id, None)
            return
        c.sets.update(seq=report.seq, phase=report.TYPE.removeprefix("report."))
        if isinstance(report, CallArrived):
            c.arrived = True
            c.sets.update(edge=self.edge_id, flow=report.flow, caller=report.caller, sip_call_id=report.sip_call_id)
            views[report.call_id] = dict.fromkeys(OPTIONAL)   # a new hash: none of them yet

    def _checkpoint(self, call_id: str, data: dict[str, Any], calls: dict[str, _Call],
                    views: dict[str, dict[str, int | None]]) -> None:
        c = calls.setdefault(call_id, _Call())
        if c.ended:
            return
        view = self._view(call_id, views)
        for name in OPTIONAL:
            if name not in data:
                continue
            value = data[name]
            if name in _NEVER_DELETED:
                if value is None:
                    continue
            elif not value:
                if view.get(name, _UNKNOWN) is not None:   # there, or maybe there (set earlier in the batch)
                    c.sets.pop(name, None)
                    c.dels.add(name)
                    view[name] = None
                continue
            text = value if name in _RAW else json.dumps(value)
            digest = hash(text)
            if view.get(name, _UNKNOWN) == digest:
                continue   # what the batch leaves already (Redis holds it, or the batch sets it)
            c.sets[name] = text
            c.dels.discard(name)
            view[name] = digest


def _always(_call_id: str) -> bool:
    return True


def _packed(view: dict[str, int | None]) -> tuple[object, ...]:
    """A call's known fields as kept between batches: one value per `OPTIONAL` name (`_UNKNOWN` if not known)."""
    return tuple(view.get(name, _UNKNOWN) for name in OPTIONAL)


def _unpacked(known: tuple[object, ...]) -> dict[str, int | None]:
    return {name: cast("int | None", value) for name, value in zip(OPTIONAL, known, strict=True)
            if value is not _UNKNOWN}
