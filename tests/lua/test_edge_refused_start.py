"""A sip-edge process that takes its id and then cannot start (its UDP port taken meanwhile: exit
75) stops cleanly and runs edge_release. The calls its dead predecessor left (SIGKILLed, restarted by
a supervisor under the same id) still live: the release must not take the heartbeat with it, or the
reconciler finds them on an edge nobody knows and ends them `edge_unknown` while the dispatchers never
declare the edge lost (no heartbeat entry to lapse). This is the interleaving of the replicas test's
failure in CI (tests/e2e/test_replicas.py: the killed-and-restarted edge gone from cc:{t}:edges, 8
CDRs edge_unknown, none edge_lost/edge_restarted). Such a release frees the id and nothing else: the
calls stay with the edge until a process of that id comes back within the lapse (it adopts them), or
edge_lost ends them (or hands them to a peer) after it; then edge_lost clears what the edge left."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from lua_harness import EDGE, Harness

from callcenter.store import RC

LAPSE = 3000
LEASE = LAPSE // 2   # the edge's lease lives half the lapse (ownership.py)
OLD, NEW, NEXT = "host/1/a", "host/2/b", "host/3/c"


async def killed_with_a_call_then_refused(h: Harness) -> int:
    """The old process beats and has a call on the queue media; it is SIGKILLed (no release); its
    lease expires and a new process takes the id (its first beat), then its start is refused and it
    releases. Returns the time of the new process's beat."""
    await h.redis.hset(h.store.keys.config, mapping={"reject_on_no_agents": 0})
    await h.flow()
    assert (await h.store.edge_beat(EDGE, OLD, LEASE, now=h.now)).rc is RC.OK
    assert (await h.arrive("c1")).detail == "queued"
    stream = h.store.keys.commands(EDGE)
    await h.redis.xgroup_create(stream, "sip-edge", id="0", mkstream=True)
    # the lease expires (Redis's own clock: made short here rather than waited for)
    await h.redis.pexpire(h.store.keys.edge_lease(EDGE), 1)
    await asyncio.sleep(0.02)
    h.now += LEASE + 1
    assert (await h.store.edge_beat(EDGE, NEW, LEASE, now=h.now)).rc is RC.OK
    assert (await h.store.edge_release(EDGE, NEW, now=h.now + 50)).rc is RC.OK
    return h.now


async def test_a_release_with_calls_left_keeps_the_heartbeat_for_edge_lost(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    beat = await killed_with_a_call_then_refused(h)
    keys = h.store.keys
    # the id is free at once; the heartbeat, the calls and the command stream stay
    assert await redis.get(keys.edge_lease(EDGE)) is None
    assert await redis.zscore(keys.edges, EDGE) == beat
    assert await redis.smembers(keys.edge_calls(EDGE)) == {b"c1"}
    assert await redis.exists(keys.commands(EDGE)) == 1

    # nobody comes back: past the lapse the reconciler leaves the call to edge_lost...
    h.now = beat + LAPSE + 1
    assert await h.store.reconcile(now=h.now, edge_lapse_ms=LAPSE) == (0, 0)
    # ...which ends it with the true reason, at the edge's last heartbeat, then clears the edge
    res = await h.store.edge_lost(EDGE, LAPSE, now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "1")
    ended = [d for _, d in await h.events("call.ended")]
    assert [(d["call_id"], d["outcome"], d["ended_by"], d["reason"]) for d in ended] == [
        ("c1", "failed", "system", "edge_lost")]
    assert await redis.zscore(keys.edges, EDGE) is None
    assert await redis.exists(keys.commands(EDGE)) == 0
    assert await redis.exists(keys.edge_calls(EDGE)) == 0


async def test_a_process_of_the_id_that_comes_back_after_a_refused_start_keeps_the_calls(
        redis: aioredis.Redis) -> None:
    h = Harness(redis)
    beat = await killed_with_a_call_then_refused(h)
    keys = h.store.keys
    # the supervisor starts it again, within the lapse: the id is free, it takes it at once
    h.now = beat + 1000
    res = await h.store.edge_beat(EDGE, NEXT, LEASE, now=h.now)
    assert res.rc is RC.OK and not res.detail   # not declared lost: its calls are still its own
    h.now += LAPSE   # it beats on
    assert (await h.store.edge_beat(EDGE, NEXT, LEASE, now=h.now)).rc is RC.OK
    assert await h.store.reconcile(now=h.now, edge_lapse_ms=LAPSE) == (0, 0)
    assert (await h.store.edge_lost(EDGE, LAPSE, now=h.now)).rc is RC.STALE
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "queued" and call["edge"] == EDGE
    assert await redis.exists(keys.commands(EDGE)) == 1


async def test_a_release_without_calls_still_leaves_nothing(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await h.redis.hset(h.store.keys.config, mapping={"reject_on_no_agents": 0})
    await h.flow()
    assert (await h.store.edge_beat(EDGE, OLD, LEASE, "sbc-1", now=h.now)).rc is RC.OK
    assert (await h.arrive("c1")).detail == "queued"
    h.now += 10
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    assert (await h.store.call("c1") or {}).get("state") == "ended"
    assert (await h.store.edge_release(EDGE, OLD, now=h.now)).rc is RC.OK
    keys = h.store.keys
    assert await redis.zscore(keys.edges, EDGE) is None
    assert await redis.exists(keys.edge_info(EDGE)) == 0
    assert await redis.sismember(keys.edge_group("sbc-1"), EDGE) == 0
