"""The edge's memory of its calls in Redis, so that a process restarted under the same id adopts them.

Writes (asyncio side, in the report batch's MULTI, so a checkpoint and the report it follows land
together; planned once per batch by `checkpoint_writes.py`: per call one HSET of the fields that
changed, an HDEL of those that went): `cc:{t}:dialog:<call_id>` (hash) and the index
`cc:{t}:edge:<edge>:dialogs` (set).
- every report: the call's last `seq` and `phase` (the report type without `report.`); the first
  (`call_arrived`) also flow, caller, SIP Call-ID and the edge;
- every confirmed change (a `checkpoint` fact of the SIP side, `confirmed.py`): `legs`, JSON of each
  confirmed leg's dialog (`sippy/resume.dialog_snapshot`): caller and media leg, or once talking
  caller and agent, with `agent_id` and `offer_id`, and `timers`, the session timers of their legs
  (interval, refresher, method, start of the interval), rewritten at every refresh;
- every checkpoint fact, also each INVITE sent and each leg that stopped setting up: `pending`, JSON
  of the INVITEs still being set up (`sippy/resume.invite_snapshot`; the field is deleted when there
  is none);
- at the arrival (a `checkpoint` fact right after `call_arrived`, so in the same MULTI): `uas`, JSON
  of what answers the caller's INVITE (`sippy/resume.caller_snapshot`), deleted when our 200 goes
  to the caller;
- `call_ended`: the hash and its index entry are deleted.
Both keys expire as a safety net: the hash max_call_s (the config registry) after its arrival, the
index max_call_s after its last arrival at least (renewed at most once a minute, so given a minute more).

Reads (`load`, at start, before the SIP stack and the command stream): this edge's checkpoints;
(`load_call`, on `command.adopt`) one call's, handed over from a lost peer of its address group.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from callcenter.contract.reports import Report
from callcenter.store.config import param
from callcenter.store.keys import Keys
from callcenter_sip_edge.checkpoint_writes import CheckpointPlan, CheckpointWriter


@dataclass(frozen=True)
class DialogCheckpoint:
    """A talking call's legs at a confirmed change (made in sippy's turns, plain data)."""

    call_id: str
    # agent_id, offer_id (None before talking), legs: {"caller": .., "agent"|"media": ..} (absent
    # before the caller is answered), pending: [invite_snapshot, ...]
    data: dict[str, Any]


@dataclass(frozen=True)
class AdoptedCall:
    """A call a previous process of this edge left: its last seq and, if talking, its legs."""

    call_id: str
    seq: int
    phase: str
    flow: str
    caller: str
    sip_call_id: str
    agent_id: str | None
    offer_id: str | None
    legs: dict[str, Any] | None
    live: bool = True    # False: the dispatchers ended it meanwhile (edge_lost, reconciler): only hang up
    pending: tuple[dict[str, Any], ...] = ()   # INVITEs being set up when the process died: CANCEL them
    uas: dict[str, Any] | None = None   # the caller's INVITE, not answered when the process died: answer it
    timers: dict[str, Any] | None = None   # a talking call's session timers (`SessionTimers.snapshot`)


class Checkpoints:
    """The checkpoint hashes of one edge: written in the report pipeline, read at start."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, edge_id: str,
                 live: Callable[[str], bool] | None = None) -> None:
        """`live`: whether a call's report stream is open on this edge (`CheckpointWriter.live`)."""
        self.redis = redis
        self.keys = keys
        self.edge_id = edge_id
        self.index = keys.edge_dialogs(edge_id)
        self.ttl_s = int(param("max_call_s").default)
        self.writer = CheckpointWriter(keys, edge_id, self.ttl_s, live)

    async def read_ttl(self) -> None:
        """The safety-net TTL: the tenant's max_call_s (a call lasts no longer), else its default."""
        raw = await self.redis.hget(self.keys.config, "max_call_s")
        if raw is not None and str(raw).isdigit():
            self.ttl_s = self.writer.ttl_s = int(raw)

    def plan(self, batch: Sequence[Report | DialogCheckpoint]) -> CheckpointPlan:
        """The checkpoint writes of a report batch, for its MULTI (`checkpoint_writes.py`)."""
        return self.writer.plan(list(batch))

    async def load_call(self, call_id: str) -> AdoptedCall | None:
        """One call's checkpoint (handed to this edge by edge_lost, index already moved), None if gone."""
        h = {_s(k): _s(v) for k, v in (await self.redis.hgetall(self.keys.dialog(call_id)) or {}).items()}
        return _record(call_id, h, live=True)

    async def load(self) -> list[AdoptedCall]:
        """This edge's checkpointed calls (a stale index entry without its hash is dropped)."""
        ids = sorted(_s(i) for i in await self.redis.smembers(self.index))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hgetall(self.keys.dialog(call_id))
                pipe.sismember(self.keys.calls, call_id)
            replies = await pipe.execute()
        calls: list[AdoptedCall] = []
        gone: list[str] = []
        for call_id, h, live in zip(ids, replies[::2], replies[1::2], strict=True):
            h = {_s(k): _s(v) for k, v in (h or {}).items()}
            # an arrival may not be applied yet
            record = _record(call_id, h, live=bool(live) or h.get("phase") == "call_arrived")
            if record is None:
                gone.append(call_id)
                continue
            calls.append(record)
            if not record.live:
                gone.append(call_id)
        if gone:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.srem(self.index, *gone)
                pipe.delete(*(self.keys.dialog(call_id) for call_id in gone))
                await pipe.execute()
        return calls


def _record(call_id: str, h: dict[str, str], live: bool) -> AdoptedCall | None:
    """The AdoptedCall of a checkpoint hash (decoded), None if it has no seq (gone or half written)."""
    if not h.get("seq", "").isdigit():
        return None
    return AdoptedCall(
        call_id=call_id, seq=int(h["seq"]), phase=h.get("phase", ""), flow=h.get("flow", ""),
        caller=h.get("caller", ""), sip_call_id=h.get("sip_call_id", ""), agent_id=h.get("agent_id"),
        offer_id=h.get("offer_id"), legs=json.loads(h["legs"]) if h.get("legs") else None,
        pending=tuple(json.loads(h["pending"])) if h.get("pending") else (), live=live,
        uas=json.loads(h["uas"]) if h.get("uas") else None,
        timers=json.loads(h["timers"]) if h.get("timers") else None)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
