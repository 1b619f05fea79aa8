"""The checkpoint writes of the sip-edge's report batches, planned once per batch (checkpoint_writes.py),
on a real Redis.

Per call and batch at most one HSET and one HDEL; a field is written only when its value changed
since this process wrote it, deleted only when there; the call's hash gets one EXPIRE (at its
arrival) and the edge's index one per minute at most; a batch that did not land changes nothing of
what is known, so its retry and the batches after it write everything again. And whatever the
batching, Redis ends up holding what writing every report and checkpoint one by one would leave.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from callcenter.contract.reports import AgentAnswered, CallArrived, CallEnded, CommandRefused, MediaAnswered, Report
from callcenter.store.keys import Keys
from callcenter_sip_edge.checkpoint import Checkpoints, DialogCheckpoint
from callcenter_sip_edge.checkpoint_writes import CheckpointPlan

EDGE = "edge-w"
KEYS = Keys("w")
LEGS = {"caller": {"call_id": "c1@x", "local_cseq": 7}, "media": {"call_id": "m1@x", "local_cseq": 1}}
PENDING = [{"call_id": "a1@x", "cseq": 1, "target": "sip:7@x"}]


def arrived(call_id: str, seq: int = 1) -> CallArrived:
    return CallArrived(call_id=call_id, edge=EDGE, seq=seq, ts=1, flow="sales", caller="ann",
                       caller_uri="sip:ann@x", sip_call_id=f"{call_id}@x", source="127.0.0.1:5060")


def media(call_id: str, seq: int) -> MediaAnswered:
    return MediaAnswered(call_id=call_id, edge=EDGE, seq=seq, ts=2, purpose="queue", uri="sip:q@x")


async def apply(redis: aioredis.Redis, checkpoints: Checkpoints, *items: Any) -> CheckpointPlan:
    plan = checkpoints.plan(items)
    async with redis.pipeline(transaction=True) as pipe:
        for command in plan.commands:
            pipe.execute_command(*command)
        await pipe.execute()
    checkpoints.writer.applied(plan)
    return plan


def names(plan: CheckpointPlan) -> list[str]:
    return [str(c[0]) for c in plan.commands]


async def fields(redis: aioredis.Redis, call_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(KEYS.dialog(call_id))).items()}


async def test_a_call_in_one_batch_is_one_hset_and_its_expiries(redis: aioredis.Redis) -> None:
    cp = Checkpoints(redis, KEYS, EDGE)
    plan = await apply(redis, cp, arrived("c1"), DialogCheckpoint("c1", {"uas": {"cseq": 1}}), media("c1", 2),
                       DialogCheckpoint("c1", {"pending": [], "agent_id": None, "offer_id": None, "legs": LEGS}),
                       arrived("c2"))
    assert names(plan) == ["SADD", "EXPIRE", "HSET", "EXPIRE", "HSET", "EXPIRE"]
    assert plan.commands[0] == ("SADD", cp.writer.index, "c1", "c2")
    assert await fields(redis, "c1") == {
        "seq": "2", "phase": "media_answered", "edge": EDGE, "flow": "sales", "caller": "ann",
        "sip_call_id": "c1@x", "uas": json.dumps({"cseq": 1}), "legs": json.dumps(LEGS)}
    assert 0 < await redis.ttl(KEYS.dialog("c1")) <= cp.ttl_s
    assert cp.ttl_s < await redis.ttl(cp.writer.index) <= cp.writer.index_ttl_s


async def test_unchanged_fields_are_not_written_again_and_absent_ones_not_deleted(redis: aioredis.Redis) -> None:
    cp = Checkpoints(redis, KEYS, EDGE)
    await apply(redis, cp, arrived("c1"), DialogCheckpoint("c1", {"pending": PENDING}))
    # the same legs twice, the pending INVITE answered, a report: one HSET (seq, phase, legs), one HDEL
    plan = await apply(redis, cp, DialogCheckpoint("c1", {"pending": [], "legs": LEGS}), media("c1", 2),
                       DialogCheckpoint("c1", {"pending": [], "legs": LEGS}))
    assert [c[0] for c in plan.commands] == ["HDEL", "HSET"]
    assert plan.commands[0] == ("HDEL", KEYS.dialog("c1"), "pending")
    assert dict(zip(plan.commands[1][2::2], plan.commands[1][3::2], strict=True)) == {
        "seq": 2, "phase": "media_answered", "legs": json.dumps(LEGS)}
    # nothing changed: only the report's seq and phase
    plan = await apply(redis, cp, DialogCheckpoint("c1", {"pending": [], "legs": LEGS, "uas": None}),
                       AgentAnswered(call_id="c1", edge=EDGE, seq=3, ts=3, offer_id="o1", agent_id="7"))
    assert plan.commands == [("HSET", KEYS.dialog("c1"), "seq", 3, "phase", "agent_answered")]
    # a checkpoint that changes nothing writes nothing at all
    assert (await apply(redis, cp, DialogCheckpoint("c1", {"pending": [], "legs": LEGS}))).commands == []
    assert (await fields(redis, "c1"))["legs"] == json.dumps(LEGS)
    assert "pending" not in await fields(redis, "c1")


async def test_a_batch_that_did_not_land_leaves_nothing_known(redis: aioredis.Redis) -> None:
    """A plan not applied (its batch failed and was not found in Redis) is planned again in full."""
    cp = Checkpoints(redis, KEYS, EDGE)
    await apply(redis, cp, arrived("c1"))
    lost = cp.plan([DialogCheckpoint("c1", {"legs": LEGS, "pending": PENDING})])
    assert names(lost) == ["HSET"]
    again = cp.plan([DialogCheckpoint("c1", {"legs": LEGS, "pending": PENDING})])
    assert again.commands == lost.commands


async def test_the_index_expiry_is_renewed_once_a_minute_and_after_a_failure(redis: aioredis.Redis) -> None:
    cp = Checkpoints(redis, KEYS, EDGE)
    assert "EXPIRE" in [c[0] for c in (await apply(redis, cp, arrived("c1"))).commands if c[1] == cp.writer.index]
    second = await apply(redis, cp, arrived("c2"))
    assert [c[0] for c in second.commands if c[1] == cp.writer.index] == ["SADD"]
    cp.writer.failed()
    third = await apply(redis, cp, arrived("c3"))
    assert [c[0] for c in third.commands if c[1] == cp.writer.index] == ["SADD", "EXPIRE"]


async def test_an_adopted_call_is_written_in_full_until_its_fields_are_known(redis: aioredis.Redis) -> None:
    """A call this process did not create (adopted): what Redis holds is not known, so the first
    checkpoint writes every field it names and deletes every one it clears."""
    cp = Checkpoints(redis, KEYS, EDGE)
    await redis.hset(KEYS.dialog("old"), mapping={"seq": 4, "phase": "agent_answered", "pending": "[1]"})
    plan = await apply(redis, cp, DialogCheckpoint("old", {"pending": [], "legs": LEGS}))
    assert [c[0] for c in plan.commands] == ["HDEL", "HSET"]
    assert await fields(redis, "old") == {"seq": "4", "phase": "agent_answered", "legs": json.dumps(LEGS)}
    # known now
    assert (await apply(redis, cp, DialogCheckpoint("old", {"pending": [], "legs": LEGS}))).commands == []


async def test_a_call_that_ends_in_its_batch_leaves_nothing(redis: aioredis.Redis) -> None:
    cp = Checkpoints(redis, KEYS, EDGE)
    await apply(redis, cp, arrived("c0"))
    plan = await apply(redis, cp, arrived("c1"), DialogCheckpoint("c1", {"uas": {"cseq": 1}}),
                       CallEnded(call_id="c1", edge=EDGE, seq=2, ts=3, by="caller", reason="bye"),
                       CallEnded(call_id="c0", edge=EDGE, seq=2, ts=3, by="caller", reason="bye"))
    assert names(plan) == ["DEL", "SREM"]
    assert not await redis.exists(KEYS.dialog("c1"), KEYS.dialog("c0"))
    assert await redis.smembers(cp.writer.index) == set()


async def test_a_refusal_after_the_end_in_a_later_batch_makes_no_hash_again(redis: aioredis.Redis) -> None:
    live: set[str] = set()
    cp = Checkpoints(redis, KEYS, EDGE, live=live.__contains__)
    live.add("c1")
    await apply(redis, cp, arrived("c1"))
    live.discard("c1")
    await apply(redis, cp, CallEnded(call_id="c1", edge=EDGE, seq=2, ts=3, by="caller", reason="bye"))
    refusal = CommandRefused(call_id="c1", edge=EDGE, seq=3, ts=4, command="command.ring", offer_id="o1",
                             reason="unknown_call")
    assert (await apply(redis, cp, refusal)).commands == []
    assert not await redis.exists(KEYS.dialog("c1"))
    # a live call's refusal still moves its seq and phase
    live.add("c2")
    await apply(redis, cp, arrived("c2"))
    await apply(redis, cp, CommandRefused(call_id="c2", edge=EDGE, seq=2, ts=4, command="command.ring",
                                          offer_id="o1", reason="wrong_state"))
    assert (await fields(redis, "c2"))["seq"] == "2"
    assert await redis.ttl(KEYS.dialog("c2")) > 0


def _one_by_one(state: dict[str, dict[str, str]], item: Report | DialogCheckpoint) -> None:
    """What writing each report and checkpoint on its own leaves (the edge before batches were planned)."""
    if isinstance(item, DialogCheckpoint):
        h = state.setdefault(item.call_id, {})
        for name in ("legs", "agent_id", "offer_id"):
            if item.data.get(name) is not None:
                h[name] = item.data[name] if name != "legs" else json.dumps(item.data[name])
        for name in ("timers", "pending", "uas"):
            if item.data.get(name):
                h[name] = json.dumps(item.data[name])
            elif name in item.data:
                h.pop(name, None)
        return
    if isinstance(item, CallEnded):
        state.pop(item.call_id, None)
        return
    h = state.setdefault(item.call_id, {})
    h.update(seq=str(item.seq), phase=item.TYPE.removeprefix("report."))
    if isinstance(item, CallArrived):
        h.update(edge=EDGE, flow=item.flow, caller=item.caller, sip_call_id=item.sip_call_id)


@pytest.mark.parametrize("seed", range(8))
async def test_any_batching_leaves_what_one_by_one_writes_leave(redis: aioredis.Redis, seed: int) -> None:
    rng = random.Random(seed)
    cp = Checkpoints(redis, KEYS, EDGE)
    expected: dict[str, dict[str, str]] = {}
    per_call: list[list[Report | DialogCheckpoint]] = []
    for n in range(60):
        call_id = f"c{n}"
        items: list[Report | DialogCheckpoint] = [arrived(call_id)]
        per_call.append(items)
        seq = 1
        for _ in range(rng.randint(0, 8)):
            if rng.random() < 0.4:
                seq += 1
                items.append(media(call_id, seq))
                continue
            data: dict[str, Any] = {}
            for name, values in (("legs", [None, LEGS, {"caller": {"n": rng.randint(0, 2)}}]),
                                 ("agent_id", [None, "7", "8"]), ("offer_id", [None, "o1"]),
                                 ("timers", [None, {}, {"interval": 90}]), ("pending", [[], PENDING]),
                                 ("uas", [None, {"cseq": 1}])):
                if rng.random() < 0.5:
                    data[name] = rng.choice(values)
            items.append(DialogCheckpoint(call_id, data))
        if rng.random() < 0.5:
            items.append(CallEnded(call_id=call_id, edge=EDGE, seq=seq + 1, ts=9, by="caller", reason="bye"))
    # interleaved as the facts of up to 6 concurrent calls are, each call's in its order
    items, active = [], []
    while per_call or active:
        while per_call and len(active) < 6:
            active.append(per_call.pop(0))
        pick = rng.choice(active)
        items.append(pick.pop(0))
        if not pick:
            active.remove(pick)
    i = 0
    while i < len(items):
        size = rng.randint(1, 12)
        batch = items[i:i + size]
        for item in batch:
            _one_by_one(expected, item)
        if rng.random() < 0.2:
            cp.plan(batch)   # a try that did not land: planned, never applied
        await apply(redis, cp, *batch)
        i += size
    for call_id, h in expected.items():
        assert await fields(redis, call_id) == h, call_id
    assert {m.decode() for m in await redis.smembers(cp.writer.index)} == set(expected)
