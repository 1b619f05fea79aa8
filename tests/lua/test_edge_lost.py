"""edge_lost.lua: the calls of a sip-edge whose heartbeat lapsed end with reason edge_lost."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import EDGE, Harness

from callcenter.store import RC

LAPSE = 5000


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    h = Harness(redis)
    await h.redis.hset(h.store.keys.config, mapping={"reject_on_no_agents": 0, "wrapup_s": 10})
    await h.flow()
    return h


async def beat(h: Harness, edge: str = EDGE) -> None:
    await h.redis.zadd(h.store.keys.edges, {edge: h.now})


async def test_lapsed_edge_ends_its_calls_and_releases_the_agents(h: Harness) -> None:
    await h.agent("a1", ["sales"])
    h.now += 10
    await h.agent("a2", ["sales"])
    await beat(h)
    assert (await h.arrive("talking")).detail == "offered"          # -> a1
    await h.report("report.agent_answered", "talking", offer_id="1", agent_id="a1")
    assert (await h.arrive("ringing")).detail == "offered"          # -> a2, not answered yet
    assert (await h.arrive("waiting")).detail == "queued"
    # a call of another edge, alive, is not touched
    await h.redis.zadd(h.store.keys.edges, {"edge-2": h.now + LAPSE})
    await h.report("report.call_arrived", "other", edge="edge-2", flow="support", caller="bob",
                   caller_uri="sip:bob@127.0.0.1", sip_call_id="other@x", source="127.0.0.1:2")

    h.now += LAPSE + 1
    res = await h.store.edge_lost(EDGE, LAPSE, now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "3")

    ended = {d["call_id"]: d for _, d in await h.events("call.ended")}
    assert set(ended) == {"talking", "ringing", "waiting"}
    for cdr in ended.values():
        assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "system", "edge_lost")
    # talk time up to the edge's last heartbeat (here: when the agent answered), not up to the
    # moment the lapse was noticed: only the heartbeats vouch for the call (issue 9, item 2)
    assert ended["talking"]["agent_id"] == "a1" and ended["talking"]["talk_ms"] == 0
    # the talking agent gets its wrap-up; the ringing one is free at once and takes the live
    # edge's waiting call, never a call of the dead edge (those left the queue first)
    assert await h.state("a1") == "wrap_up"
    assert (await h.store.agent("a2") or {})["call"] == "other"
    assert [d["call_id"] for _, d in await h.events("call.offered")] == ["talking", "ringing", "other"]
    assert await h.redis.zscore(h.store.keys.edges, EDGE) is None
    assert await h.redis.exists(h.store.keys.edge_calls(EDGE)) == 0
    assert await h.redis.smembers(h.store.keys.calls) == {b"other"}
    assert await h.redis.zcard(h.store.keys.queue("support")) == 0
    # no command goes to the dead edge for these calls
    assert [t for t, _ in await h.commands()].count("command.hangup") == 0

    # a second replica (or a second pass) finds nothing left
    assert (await h.store.edge_lost(EDGE, LAPSE, now=h.now)).rc is RC.NOT_FOUND
    # late reports of the dead edge are harmless
    res = await h.report("report.call_ended", "talking", by="caller", reason="bye")
    assert res.rc is RC.OK and len(await h.events("call.ended")) == 3


async def test_an_edge_with_a_recent_heartbeat_is_left_alone(h: Harness) -> None:
    await beat(h)
    await h.arrive("c1")
    h.now += LAPSE  # exactly the lapse: not yet lost
    res = await h.store.edge_lost(EDGE, LAPSE, now=h.now)
    assert res.rc is RC.STALE
    await beat(h)  # it beat again: a run that looked at the old score changes nothing
    h.now += 100
    assert (await h.store.edge_lost(EDGE, LAPSE, now=h.now)).rc is RC.STALE
    assert (await h.store.call("c1") or {})["state"] == "queued"
    assert (await h.store.edge_lost("never-seen", LAPSE, now=h.now)).rc is RC.NOT_FOUND


async def test_many_calls_end_in_bounded_steps(h: Harness) -> None:
    await beat(h)
    for n in range(5):
        await h.arrive(f"c{n}")
    h.now += LAPSE + 1
    first = await h.store.edge_lost(EDGE, LAPSE, limit=3, now=h.now)
    assert (first.rc, first.detail) == (RC.OK, "3")
    assert await h.redis.zscore(h.store.keys.edges, EDGE) is not None  # more to do
    second = await h.store.edge_lost(EDGE, LAPSE, limit=3, now=h.now)
    assert (second.rc, second.detail) == (RC.OK, "2")
    assert await h.redis.zscore(h.store.keys.edges, EDGE) is None
    assert len(await h.events("call.ended")) == 5
    assert await h.redis.scard(h.store.keys.calls) == 0


async def test_dispatcher_pass_finds_lapsed_edges(h: Harness) -> None:
    from callcenter_dispatcher.edges import check_edges

    await beat(h)
    await h.arrive("c1")
    await h.redis.zadd(h.store.keys.edges, {"edge-alive": h.now + LAPSE})
    assert await check_edges(h.store, LAPSE, now=h.now + LAPSE) == {}
    assert await check_edges(h.store, LAPSE, now=h.now + LAPSE + 1) == {EDGE: 1}
    assert await h.redis.zrange(h.store.keys.edges, 0, -1) == [b"edge-alive"]
