"""edge_lost.lua: the calls of a sip-edge whose heartbeat lapsed end with reason edge_lost, or go to a
live peer of its address group (CC_EDGE_GROUP: one claim, in the step); edge_beat.lua tells a lost
edge that comes back what happened."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from lua_harness import EDGE, Harness

from callcenter.contract.codec import decode
from callcenter.store import RC

LAPSE = 5000
LEASE = LAPSE // 2


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    h = await Harness.configured(redis, reject_on_no_agents=0, wrapup_s=10)
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
    await h.on_media("other", edge="edge-2")

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


# -- address groups: a peer adopts ----------------------------------------------------------------
async def group_beat(h: Harness, edge: str, group: str = "", at: int | None = None) -> Any:
    return await h.store.edge_beat(edge, f"token-{edge}", LEASE, group, now=h.now if at is None else at)


async def checkpointed(h: Harness, call_id: str, edge: str = EDGE) -> None:
    """What the edge writes with its reports (callcenter_sip_edge.checkpoint)."""
    await h.redis.hset(h.store.keys.dialog(call_id), mapping={"seq": 2, "phase": "agent_answered", "edge": edge})
    await h.redis.sadd(h.store.keys.edge_dialogs(edge), call_id)


async def commands_of(h: Harness, edge: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for e in (decode(f, i) for i, f in await h.redis.xrange(h.store.keys.commands(edge)))]


async def talking_and_waiting(h: Harness) -> None:
    await h.agent("a1", ["sales"])
    assert (await h.arrive("talking")).detail == "offered"
    await h.report("report.agent_answered", "talking", offer_id="1", agent_id="a1")
    assert (await h.arrive("waiting")).detail == "queued"
    await checkpointed(h, "talking")
    await checkpointed(h, "waiting")


async def test_a_live_peer_of_the_address_group_adopts_the_calls(h: Harness) -> None:
    await group_beat(h, EDGE, "sbc-1")
    await group_beat(h, "edge-2", "sbc-1")
    await group_beat(h, "edge-3", "other")   # alive, another address: never a peer
    await talking_and_waiting(h)

    h.now += LAPSE + 1
    await group_beat(h, "edge-2", "sbc-1")
    await group_beat(h, "edge-3", "other")
    res = await h.store.edge_lost(EDGE, LAPSE, now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "2")

    assert await h.events("call.ended") == []          # nothing ended, no agent freed
    assert await h.state("a1") == "in_call"
    for call_id in ("talking", "waiting"):
        assert (await h.store.call(call_id) or {})["edge"] == "edge-2"
        assert await h.redis.hget(h.store.keys.dialog(call_id), "edge") == b"edge-2"
    assert await h.redis.smembers(h.store.keys.edge_calls("edge-2")) == {b"talking", b"waiting"}
    assert await h.redis.smembers(h.store.keys.edge_dialogs("edge-2")) == {b"talking", b"waiting"}
    assert await h.redis.exists(h.store.keys.edge_dialogs(EDGE), h.store.keys.edge_calls(EDGE)) == 0
    # the waiting caller keeps its place in the queue, now on the peer
    assert await h.redis.zrange(h.store.keys.queue("support"), 0, -1) == [b"waiting"]
    adopt = sorted((t, d["call_id"], d["from_edge"]) for t, d in await commands_of(h, "edge-2"))
    assert adopt == [("command.adopt", "talking", EDGE), ("command.adopt", "waiting", EDGE)]
    assert await commands_of(h, "edge-3") == []
    assert await h.redis.zscore(h.store.keys.edges, EDGE) is None
    # the lost edge's late reports are refused: the calls are the peer's now
    res = await h.report("report.call_ended", "talking", by="caller", reason="bye")
    assert res.rc is RC.INVALID and await h.events("call.ended") == []


async def test_of_several_peers_exactly_one_adopts_the_one_with_fewest_calls(h: Harness) -> None:
    for edge in (EDGE, "edge-2", "edge-3", "edge-4"):
        await group_beat(h, edge, "sbc-1")
    await talking_and_waiting(h)
    await h.redis.sadd(h.store.keys.edge_calls("edge-2"), "x1", "x2")   # busier
    await h.redis.sadd(h.store.keys.edge_calls("edge-4"), "x3")
    h.now += LAPSE + 1
    for edge in ("edge-2", "edge-3", "edge-4"):
        await group_beat(h, edge, "sbc-1")
    # two dispatchers race: the second finds nothing
    assert (await h.store.edge_lost(EDGE, LAPSE, now=h.now)).rc is RC.OK
    assert (await h.store.edge_lost(EDGE, LAPSE, now=h.now)).rc is RC.NOT_FOUND
    assert len(await commands_of(h, "edge-3")) == 2
    assert await commands_of(h, "edge-2") == [] and await commands_of(h, "edge-4") == []


async def test_without_a_live_peer_the_calls_end_with_a_true_record(h: Harness) -> None:
    await group_beat(h, EDGE, "sbc-1")
    await group_beat(h, "edge-2", "sbc-1")   # the peer is lost too (no beat since)
    await h.agent("a1", ["sales"])
    assert (await h.arrive("talking")).detail == "offered"
    h.now += 1000
    await h.report("report.agent_answered", "talking", offer_id="1", agent_id="a1")
    h.now += 3000
    await group_beat(h, EDGE, "sbc-1")        # its last heartbeat: 3 s into the talk
    last_beat = h.now
    assert (await h.arrive("waiting")).detail == "queued"
    await checkpointed(h, "talking")
    await checkpointed(h, "waiting")

    h.now = last_beat + LAPSE + 1
    res = await h.store.edge_lost(EDGE, LAPSE, now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "2")
    ended = {d["call_id"]: d for _, d in await h.events("call.ended")}
    assert set(ended) == {"talking", "waiting"}
    for cdr in ended.values():
        assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "system", "edge_lost")
    # the talk time the edge could vouch for: up to its last heartbeat, not up to the lapse
    assert ended["talking"]["talk_ms"] == 3000
    # the waiting caller is neither left counted as waiting nor dropped without a record
    assert await h.redis.zcard(h.store.keys.queue("support")) == 0
    assert await h.redis.smembers(h.store.keys.calls) == set()
    assert await commands_of(h, "edge-2") == []


async def test_a_peer_adopts_only_checkpointed_calls(h: Harness) -> None:
    await group_beat(h, EDGE, "sbc-1")
    await group_beat(h, "edge-2", "sbc-1")
    assert (await h.arrive("unknown")).detail == "queued"     # no checkpoint: nothing to adopt
    h.now += LAPSE + 1
    await group_beat(h, "edge-2", "sbc-1")
    assert (await h.store.edge_lost(EDGE, LAPSE, now=h.now)).rc is RC.OK
    [(_, cdr)] = await h.events("call.ended")
    assert (cdr["call_id"], cdr["reason"]) == ("unknown", "edge_lost")
    assert await commands_of(h, "edge-2") == []


async def test_a_lost_edge_that_comes_back_is_told_once(h: Harness) -> None:
    assert (await group_beat(h, EDGE, "sbc-1")).detail in (None, "")
    assert await h.redis.smembers(h.store.keys.edge_group("sbc-1")) == {EDGE.encode()}
    h.now += LAPSE + 1
    assert (await h.store.edge_lost(EDGE, LAPSE, now=h.now)).rc is RC.OK
    # it was only cut off (or stopped): its lease lapsed, its next beat takes it again and learns
    res = await group_beat(h, EDGE, "sbc-1", at=h.now + 10)
    assert (res.rc, res.detail) == (RC.OK, str(h.now))
    assert (await group_beat(h, EDGE, "sbc-1", at=h.now + 20)).detail in (None, "")
    # a new group moves it
    await group_beat(h, EDGE, "sbc-2", at=h.now + 30)
    assert await h.redis.smembers(h.store.keys.edge_group("sbc-1")) == set()
    assert await h.redis.smembers(h.store.keys.edge_group("sbc-2")) == {EDGE.encode()}
