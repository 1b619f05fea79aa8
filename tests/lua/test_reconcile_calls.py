"""reconcile.lua: every call ends. Calls of an edge with no heartbeat (never sent one, or gone) and
calls stalled in their state longer than that state may last are ended with a CDR; their agents
are freed with no penalty."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import EDGE, Harness

LAPSE = 5000
S = 1000
# an offer may last ring_timeout_s + offer_lease_grace_s + whisper_max_s (defaults 20, 15, 30),
# and the reconciler waits offer_lease_grace_s more so that the offer's own lease timer wins
OFFER_BOUND_MS = (20 + 15 + 30 + 15) * S
MAX_CALL_MS = 14_400 * S  # max_call_s default


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    h = await Harness.configured(redis, reject_on_no_agents=0, wrapup_s=10)
    await h.flow()
    await h.flow("limited", max_wait_s=60)
    return h


async def beat(h: Harness, edge: str = EDGE) -> None:
    await h.redis.zadd(h.store.keys.edges, {edge: h.now})


async def one_ends_just_past_the_bound(h: Harness) -> None:
    """At h.now (the bound) nothing ends; 1 ms later one call does. The edge is alive all along."""
    await beat(h)
    assert await h.store.reconcile(now=h.now, edge_lapse_ms=LAPSE) == (0, 0)
    h.now += 1
    await beat(h)
    assert await h.store.reconcile(now=h.now, edge_lapse_ms=LAPSE) == (0, 1)


async def agent_counts(h: Harness, agent_id: str) -> tuple[str, str, str]:
    agent = await h.store.agent(agent_id) or {}
    return agent["state"], agent.get("missed", "0"), agent.get("missed_in_row", "0")


async def test_calls_of_an_edge_that_never_sent_a_heartbeat_end(h: Harness) -> None:
    await h.agent("a1", ["sales"])
    h.now += 10
    await h.agent("a2", ["sales"])
    h.now += 10
    await h.agent("a3", ["sales"])
    assert (await h.arrive("talking")).detail == "offered"          # -> a1
    await h.report("report.agent_answered", "talking", offer_id="1", agent_id="a1")
    assert (await h.arrive("ringing")).detail == "offered"          # -> a2
    await h.redis.hset(h.store.keys.config, "max_no_answer", 1)      # a failed offer would pause a2
    # a live edge's call waits; it must be untouched, and may take a freed agent
    await beat(h, "edge-2")
    await h.report("report.call_arrived", "other", edge="edge-2", flow="limited", caller="bob",
                   caller_uri="sip:bob@127.0.0.1", sip_call_id="other@x", source="127.0.0.1:2")
    h.seq["other"] = 1
    await h.on_media("other", edge="edge-2")  # -> a3
    assert (await h.arrive("waiting")).detail == "queued"

    # not within the lapse: the edge may just not have beaten yet
    h.now += LAPSE
    await beat(h, "edge-2")
    assert await h.store.reconcile(now=h.now, edge_lapse_ms=LAPSE) == (0, 0)
    # without the edge check (edge_lapse_ms 0), nothing is ended either
    h.now += 1
    assert await h.store.reconcile(now=h.now) == (0, 0)

    sent = len(await h.commands())
    res = await h.store.reconcile(now=h.now, edge_lapse_ms=LAPSE)
    assert res.ended == 3
    ended = {d["call_id"]: d for _, d in await h.events("call.ended")}
    assert set(ended) == {"talking", "ringing", "waiting"}
    for cdr in ended.values():
        assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "system", "edge_unknown")
    assert ended["talking"]["agent_id"] == "a1" and ended["talking"]["talk_ms"] == LAPSE + 1
    # agents freed, nobody blamed: the talker wraps up as after any talk, the ringing one is free
    assert await agent_counts(h, "a1") == ("wrap_up", "0", "0")
    assert await agent_counts(h, "a2") == ("free", "0", "0")
    assert [t for t, _ in await h.events("call.agent_failed")] == []
    assert await h.redis.smembers(h.store.keys.calls) == {b"other"}
    assert await h.redis.exists(h.store.keys.edge_calls(EDGE)) == 0
    assert await h.redis.zcard(h.store.keys.queue("support")) == 0
    # no command goes to an edge nobody knows
    assert len(await h.commands()) == sent
    # a second run finds nothing
    assert await h.store.reconcile(now=h.now, edge_lapse_ms=LAPSE) == (0, 0)


async def test_calls_of_a_vanished_edge_end(h: Harness) -> None:
    """An edge declared lost (its heartbeat removed) whose call was recorded afterwards."""
    await beat(h)
    assert (await h.arrive("first")).detail == "queued"
    await h.redis.zrem(h.store.keys.edges, EDGE)
    assert (await h.arrive("late")).detail == "queued"
    h.now += LAPSE + 1
    assert await h.store.reconcile(now=h.now, edge_lapse_ms=LAPSE) == (0, 2)
    reasons = {d["call_id"]: d["reason"] for _, d in await h.events("call.ended")}
    assert reasons == {"first": "edge_unknown", "late": "edge_unknown"}


async def test_an_offer_stalled_past_its_lease_ends_and_frees_the_agent_without_blame(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "max_no_answer", 1)
    await h.agent("a1", ["sales"])
    assert (await h.arrive("c1")).detail == "offered"
    # its lease timer never fires (lost): only the reconciler can end it
    h.now += OFFER_BOUND_MS
    await one_ends_just_past_the_bound(h)
    [(_, cdr)] = await h.events("call.ended")
    assert (cdr["call_id"], cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("c1", "failed", "system", "stalled")
    assert await agent_counts(h, "a1") == ("free", "0", "0")
    # the live edge is told to hang up what it may still hold
    assert (await h.commands())[-1] == ("command.hangup", {"call_id": "c1", "reason": "stalled"})
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "ended"


async def test_a_wait_past_the_flows_maximum_ends_and_one_without_a_maximum_waits_for_max_call_s(
        h: Harness) -> None:
    await beat(h)
    assert (await h.arrive("bounded", flow="limited")).detail == "queued"
    assert (await h.arrive("unbounded")).detail == "queued"
    h.now += (60 + 15) * S  # max_wait_s + offer_lease_grace_s: the maxwait timer had its chance
    await one_ends_just_past_the_bound(h)
    assert [d["call_id"] for _, d in await h.events("call.ended")] == ["bounded"]
    assert await h.redis.zcard(h.store.keys.queue("limited")) == 0

    h.now += MAX_CALL_MS - (60 + 15) * S - 1  # at the bound itself
    await one_ends_just_past_the_bound(h)
    assert [d["reason"] for _, d in await h.events("call.ended")] == ["stalled", "stalled"]


async def test_a_talk_longer_than_max_call_s_ends_and_the_bound_is_configurable(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "max_call_s", 600)
    await h.agent("a1", ["sales"])
    await beat(h)
    assert (await h.arrive("c1")).detail == "offered"
    h.now += 2 * S
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    h.now += 600 * S
    await one_ends_just_past_the_bound(h)
    [(_, cdr)] = await h.events("call.ended")
    assert (cdr["reason"], cdr["agent_id"], cdr["talk_ms"]) == ("stalled", "a1", 600 * S + 1)
    assert await agent_counts(h, "a1") == ("wrap_up", "0", "0")
