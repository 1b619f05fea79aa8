"""Overflow from flow to flow (issue 10, item 7): flow_upsert refuses a cycle of overflow_flow, the
maximum wait after a hop counts from the hop, a call hops at most max_overflows times, and a hop
is not a new incoming call of the flow it enters. Real redis-server, controlled clock."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import Harness

from callcenter.store import RC
from callcenter.store.reads import Reads


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    return await Harness.configured(redis, reject_on_no_agents=0)


async def upsert(h: Harness, flow_id: str, overflow_flow: str, max_wait_s: int = 10) -> tuple[RC, str]:
    res = await h.store.flow_upsert(flow_id, {"skill": "sales", "queue_uri": "sip:q@127.0.0.1:7000",
                                              "max_wait_s": max_wait_s, "overflow_flow": overflow_flow}, now=h.now)
    return res.rc, res.detail


async def overflows(h: Harness) -> list[tuple[str, str]]:
    return [(d["flow"], d.get("to_flow", "")) for _, d in await h.events("call.overflowed")]


@pytest.mark.parametrize(("chain", "closing", "cycle"), [
    ([], ("a", "a"), "a -> a"),
    ([("a", "b")], ("b", "a"), "b -> a -> b"),
    ([("a", "b"), ("b", "c")], ("c", "a"), "c -> a -> b -> c"),
])
async def test_flow_upsert_refuses_an_overflow_cycle_and_writes_nothing(
        h: Harness, chain: list[tuple[str, str]], closing: tuple[str, str], cycle: str) -> None:
    for flow_id, target in chain:
        assert await upsert(h, flow_id, target) == (RC.OK, "")
    flow_id, target = closing
    before = await h.redis.hgetall(h.store.keys.flow(flow_id))
    assert await upsert(h, flow_id, target) == (RC.INVALID, f"overflow cycle: {cycle}")
    assert await h.redis.hgetall(h.store.keys.flow(flow_id)) == before


async def test_flow_upsert_accepts_a_chain_and_a_flow_leaving_a_cycle(h: Harness) -> None:
    assert await upsert(h, "a", "b") == (RC.OK, "")
    assert await upsert(h, "b", "c") == (RC.OK, "")
    assert await upsert(h, "c", "") == (RC.OK, "")
    assert await upsert(h, "a", "c") == (RC.OK, "")  # a -> c, b -> c: a merge, no cycle
    # a cycle already in the cache (written before this check existed) does not block other flows
    await h.redis.hset(h.store.keys.flow("c"), "overflow_flow", "b")
    assert await upsert(h, "d", "b") == (RC.OK, "")


async def test_max_wait_after_a_hop_counts_from_the_hop(h: Harness) -> None:
    await upsert(h, "c", "")
    await upsert(h, "b", "c", max_wait_s=60)
    await upsert(h, "a", "b", max_wait_s=60)
    await h.arrive("c1", flow="a")
    h.now += 60_000
    assert await h.store.fire_timers(now=h.now) == 1
    assert await h.store.fire_timers(now=h.now) == 0  # b's 60 s start now, not at the arrival
    assert await overflows(h) == [("a", "b")]
    h.now += 59_999
    assert await h.store.fire_timers(now=h.now) == 0
    h.now += 1
    assert await h.store.fire_timers(now=h.now) == 1
    assert await overflows(h) == [("a", "b"), ("b", "c")]


async def test_a_call_overflows_at_most_max_overflows_times_then_stays_queued(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "max_overflows", 2)
    await upsert(h, "a", "b")
    await upsert(h, "b", "")
    # a cycle a -> b -> a in the cache, as one provisioned before cycles were refused
    await h.redis.hset(h.store.keys.flow("b"), "overflow_flow", "a")
    await h.arrive("c1", flow="a")
    for _ in range(6):
        h.now += 10_000
        await h.store.fire_timers(now=h.now)
    assert await overflows(h) == [("a", "b"), ("b", "a")]
    call = await h.store.call("c1")
    assert call is not None and (call["state"], call["flow"], call["overflows"]) == ("queued", "a", "2")
    assert await h.redis.zrange(h.store.keys.queue("a"), 0, -1) == [b"c1"]
    # it waits on: the reconciler does not take a wait past its (spent) maximum for a stalled call
    h.now += 3_600_000
    assert (await h.store.reconcile(now=h.now)).ended == 0
    assert (await h.store.call("c1") or {})["state"] == "queued"


async def test_max_overflows_zero_never_moves_a_call_to_another_flow(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "max_overflows", 0)
    await upsert(h, "b", "")
    await upsert(h, "a", "b")
    await h.arrive("c1", flow="a")
    h.now += 10_000
    await h.store.fire_timers(now=h.now)
    assert await overflows(h) == []
    assert (await h.store.call("c1") or {})["flow"] == "a"


async def test_an_overflowed_call_is_not_a_new_incoming_call(h: Harness) -> None:
    await upsert(h, "b", "")
    await upsert(h, "a", "b")
    await h.arrive("c1", flow="a")
    h.now += 10_000
    await h.store.fire_timers(now=h.now)
    a = await h.redis.hgetall(h.store.keys.flow_stats("a"))
    b = await h.redis.hgetall(h.store.keys.flow_stats("b"))
    total = (await Reads(h.redis, h.store.keys).stats()).global_  # the sum of the flows' counters
    assert (a.get(b"incalls"), a.get(b"overflowed"), a.get(b"overflowed_in")) == (b"1", b"1", None)
    assert (b.get(b"incalls"), b.get(b"overflowed_in"), b.get(b"onhold")) == (None, b"1", b"1")
    assert (total.incalls, total.overflowed, total.overflowed_in, total.onhold) == (1, 1, 1, 1)
