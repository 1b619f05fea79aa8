"""Hostile callers cost no agent and blame none (issue 10, item 1): a caller is offered to an
agent only once it is on our media (its dialog confirmed), callers that never get there do not
hold up those behind them, and a caller that fails the connect frees the agent without penalty.
Real redis-server, controlled clock."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import Harness, rings

from callcenter.store import RC


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    return await Harness.configured(redis, reject_on_no_agents=0, max_no_answer=1)


async def test_a_caller_not_on_media_yet_is_not_offered_even_to_a_free_agent(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    res = await h.arrive("c1", on_media=False)
    assert (res.rc, res.detail) == (RC.OK, "queued")
    assert [t for t, _ in await h.commands()] == ["command.media"]   # the queue media, no ring
    assert await h.state("a1") == "free"
    # the edge reports the queue media's answer once the caller ACKed it: now the agent rings
    assert (await h.on_media("c1")).detail == "offered"
    assert rings(await h.commands())[0]["agent_id"] == "a1"


async def test_callers_that_never_get_on_media_do_not_hold_up_a_real_caller(h: Harness) -> None:
    await h.flow()
    for bad in ("bad1", "bad2", "bad3"):
        await h.arrive(bad, on_media=False)
    assert (await h.arrive("real")).detail == "queued"   # on media, nobody logged in yet
    await h.agent("a1", ["sales"])                       # logs in: takes the first caller on media
    assert [d["call_id"] for d in rings(await h.commands())] == ["real"]
    # an external dispatcher cannot ring an agent for a caller not on media either
    await h.agent("a2", ["sales"])
    res = await h.store.dispatch_call("bad1", "a2", now=h.now)
    assert (res.rc, res.detail) == (RC.INVALID, "the caller is not on media yet")


@pytest.mark.parametrize("reason", ["caller_no_ack", "caller_reinvite_timeout"])
async def test_a_caller_failing_the_connect_frees_the_agent_at_once_unblamed(h: Harness, reason: str) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=30)
    assert (await h.arrive("c1")).detail == "offered"
    # the agent answered, the caller never did its part: the edge ends the call, saying why
    res = await h.report("report.call_ended", "c1", by="edge", reason=reason)
    assert res.rc is RC.OK
    agent = await h.store.agent("a1")
    assert agent is not None
    assert (agent["state"], agent.get("missed", "0"), agent.get("missed_in_row", "0")) == ("free", "0", "0")
    assert await h.events("agent.paused") == []
    [(_, cdr)] = await h.events("call.ended")
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"], cdr["agent_id"]) == ("failed", "edge", reason, "a1")
    # the freed agent takes the next caller at once
    assert (await h.arrive("c2")).detail == "offered"


async def test_a_caller_that_acked_its_welcome_is_offered_when_it_ends_without_a_queue_leg(h: Harness) -> None:
    """Review point: a caller the welcome media answered (and that ACKed: the edge reports the
    answer only then) is on our media; when the welcome ends it rings a free agent at once, with no
    queue media set up first. Only a caller nobody answered yet needs media first."""
    await h.flow(welcome_uri="sip:welcome@127.0.0.1:7001")
    await h.agent("a1", ["sales"])
    assert (await h.arrive("c1")).detail == "welcome"
    await h.report("report.media_answered", "c1", purpose="welcome", uri="sip:welcome@127.0.0.1:7001")
    assert await h.state("a1") == "free"                   # not rung during the welcome
    res = await h.report("report.media_ended", "c1", purpose="welcome")
    assert res.rc is RC.OK
    media = [d["purpose"] for t, d in await h.commands() if t == "command.media"]
    assert media == ["welcome"]                            # no queue leg before the ring
    assert rings(await h.commands())[0]["agent_id"] == "a1"
    assert await h.state("a1") == "ringing"


async def test_a_welcome_that_failed_before_answering_leaves_the_caller_waiting_for_the_queue_media(
        h: Harness) -> None:
    await h.flow(welcome_uri="sip:welcome@127.0.0.1:7001")
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    await h.report("report.media_failed", "c1", purpose="welcome", reason="unreachable")
    assert rings(await h.commands()) == [] and await h.state("a1") == "free"
    assert [d["purpose"] for t, d in await h.commands() if t == "command.media"] == ["welcome", "queue"]
    assert (await h.on_media("c1")).detail == "offered"


async def test_ring_before_media_rings_a_free_agent_at_arrival(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "ring_before_media", 1)
    await h.flow()
    await h.agent("a1", ["sales"])
    assert (await h.arrive("c1", on_media=False)).detail == "offered"
    assert [t for t, _ in await h.commands()] == ["command.ring"]
    # a flow-id message still needs the caller on media first
    await h.flow("whispered", flow_id_uri="sip:flowid@127.0.0.1:7000")
    await h.agent("a2", ["sales"])
    assert (await h.arrive("c2", "whispered", on_media=False)).detail == "queued"


async def test_a_caller_whose_queue_media_failed_rings_a_free_agent_with_its_own_offer(h: Harness) -> None:
    """Waiting for media must not turn a queue media outage into lost calls: a caller nobody answered
    whose queue media failed rings a free agent with its own offer (the early offer, as with
    ring_before_media; the edge's ACK gate bounds a hostile caller to seconds, unblamed). Without a
    free agent it has nothing to hear and ends (503), as before."""
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1", on_media=False)
    res = await h.report("report.media_failed", "c1", purpose="queue", reason="unreachable")
    assert (res.rc, res.detail) == (RC.OK, "offered")
    assert rings(await h.commands())[0]["agent_id"] == "a1"
    await h.arrive("c2", on_media=False)                 # a1 rings: nobody is free
    res = await h.report("report.media_failed", "c2", purpose="queue", reason="unreachable")
    assert (res.rc, res.detail) == (RC.OK, "ended")
    [(_, cdr)] = await h.events("call.ended")
    assert (cdr["call_id"], cdr["reason"]) == ("c2", "media_failed")
