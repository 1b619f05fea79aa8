"""A ring refused `registered_elsewhere` (the agent's contacts are connections another edge holds, so
the call's edge cannot ring it) makes the call skip that agent: on a real redis-server, the agent is
not offered that call again, on any selection path (a call offered to a free agent by each strategy,
ring-all, a freed agent taking a waiting call, a flow served again, an external dispatcher's
dispatch_call), and it stays free for the other calls. The exclusion is a field of the call's hash:
it goes with the call."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from lua_harness import Harness

from callcenter.store import RC

HOLD_MS = 1000  # refused_offer_hold_ms' default


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    h = await Harness.configured(redis, reject_on_no_agents=0, wrapup_s=0)
    return h


async def rings_of(h: Harness, call_id: str) -> list[dict[str, Any]]:
    return [d for t, d in await h.commands() if t in ("command.ring", "command.ring_all") and d["call_id"] == call_id]


async def refused_elsewhere(h: Harness, call_id: str) -> str:
    """The edge refuses the call's last ring: the agent is registered over another edge's connection;
    returns that agent."""
    ring = (await rings_of(h, call_id))[-1]
    res = await h.report("report.command_refused", call_id, command="command.ring", reason="registered_elsewhere",
                         offer_id=ring["offer_id"])
    assert (res.rc, res.detail) == (RC.OK, "held")
    return str(ring["agent_id"])


async def hold_ends(h: Harness) -> None:
    h.now += HOLD_MS
    await h.store.fire_timers(now=h.now)


async def c1_refused_by_a1(h: Harness, hold_ends_too: bool = True) -> None:
    """Flow `support`, agent a1 the only one logged in; call c1 rings a1, refused registered_elsewhere."""
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    assert await refused_elsewhere(h, "c1") == "a1"
    if hold_ends_too:
        await hold_ends(h)


async def test_the_refused_agent_is_not_offered_that_call_again_but_takes_another(h: Harness) -> None:
    await c1_refused_by_a1(h, hold_ends_too=False)
    assert await h.state("a1") == "free"
    assert (await h.store.call("c1") or {})["skip_agents"] == "a1"
    for _ in range(5):   # hold after hold: the only free agent, and still not offered it
        await hold_ends(h)
        assert len(await rings_of(h, "c1")) == 1 and await h.state("a1") == "free"
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "queued" and not call.get("held_until_ms")
    # the refusal is told once: one call.agent_failed, one attempt in the CDR
    failed = [d for _, d in await h.events("call.agent_failed")]
    assert [(d["agent_id"], d["reason"], d["attempt"]) for d in failed] == [("a1", "refused", 1)]
    # the agent takes another call (its own edge's) at once, behind the call that skips it or new
    await h.arrive("c2")
    assert [r["agent_id"] for r in await rings_of(h, "c2")] == ["a1"] and await h.state("a1") == "ringing"
    # and an agent the call's edge can reach takes the call that waited
    await h.agent("a2", ["sales"])
    assert [r["agent_id"] for r in await rings_of(h, "c1")] == ["a1", "a2"]


async def test_a_freed_agent_passes_over_a_call_that_skips_it_for_the_one_behind(h: Harness) -> None:
    await c1_refused_by_a1(h)
    await h.arrive("c2")                                   # a1 rings for it
    ring2 = (await rings_of(h, "c2"))[-1]
    assert (await h.arrive("c3")).detail == "queued"       # behind c1
    assert await h.redis.zrange(h.store.keys.queue("support"), 0, -1) == [b"c1", b"c3"]
    await h.report("report.agent_answered", "c2", offer_id=ring2["offer_id"], agent_id="a1")
    await h.report("report.call_ended", "c2", by="caller", reason="bye")
    # a1 is free again: it skips the head (c1) and takes c3
    assert [r["agent_id"] for r in await rings_of(h, "c3")] == ["a1"]
    assert len(await rings_of(h, "c1")) == 1
    assert await h.redis.zrange(h.store.keys.queue("support"), 0, -1) == [b"c1"]


async def test_a_freed_agent_whose_only_waiting_call_skips_it_stays_free(h: Harness) -> None:
    await c1_refused_by_a1(h)
    commands = len(await h.commands())
    # every way an agent becomes free again looks at the waiting calls: none offers c1 to a1
    assert (await h.store.agent_pause("a1", "break", now=h.now)).rc is RC.OK
    assert (await h.store.agent_unpause("a1", now=h.now)).rc is RC.OK
    assert (await h.store.agent_logout("a1", now=h.now)).rc is RC.OK
    assert (await h.store.agent_login("a1", now=h.now)).rc is RC.OK
    await h.flow(priority=100)                            # a flow change serves the queue again
    assert await h.state("a1") == "free"
    assert [t for t, _ in (await h.commands())[commands:]] == []
    assert len(await h.events("call.agent_failed")) == 1
    # an external dispatcher is told why, rather than ringing a refusal
    res = await h.store.dispatch_call("c1", "a1", now=h.now)
    assert res.rc is RC.INVALID and "registered_elsewhere" in str(res.detail)


@pytest.mark.parametrize("strategy", ["longest-idle", "random", "top-down", "round-robin", "fewest-calls",
                                      "least-talk-time", "ring-all"])
async def test_every_strategy_offers_the_call_to_another_free_agent(h: Harness, strategy: str) -> None:
    await c1_refused_by_a1(h, hold_ends_too=False)       # a1: idle longest, first by id
    await h.agent("a2", ["sales"])                        # the call is held: a2 waits for its hold
    assert await h.state("a2") == "free"
    await h.flow(strategy=strategy)
    await hold_ends(h)
    last = (await rings_of(h, "c1"))[-1]
    if strategy == "ring-all":
        assert [t["agent_id"] for t in last["targets"]] == ["a2"]
    else:
        assert last["agent_id"] == "a2"
    assert await h.state("a1") == "free" and await h.state("a2") == "ringing"


async def test_a_served_flow_goes_past_a_free_agent_the_head_skips(h: Harness) -> None:
    """serve_flow (a flow taking another skill) offers the waiting calls to the free agents in turn:
    the first one, skipped by the head, does not stop the second from taking it."""
    await c1_refused_by_a1(h, hold_ends_too=False)
    await h.flow(skill="nobody")
    await hold_ends(h)
    await h.agent("a2", ["sales"])                        # idle for less time than a1
    assert await h.state("a2") == "free" and (await h.store.call("c1") or {})["state"] == "queued"
    await h.flow(skill="sales")
    assert [r["agent_id"] for r in await rings_of(h, "c1")] == ["a1", "a2"]
    assert await h.state("a1") == "free"


async def test_a_chat_skips_the_agent_its_edge_cannot_reach(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], audio=False, chat_capacity=2)
    assert (await h.arrive("c1", media_type="chat")).detail == "offered"
    assert await refused_elsewhere(h, "c1") == "a1"
    await hold_ends(h)
    assert len(await rings_of(h, "c1")) == 1
    assert (await h.arrive("c2", media_type="chat")).detail == "offered"   # a1 still takes other chats
    await h.agent("a2", ["sales"], audio=False, chat_capacity=2)
    assert [r["agent_id"] for r in await rings_of(h, "c1")] == ["a1", "a2"]


async def test_another_refusal_reason_does_not_skip_the_agent(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    ring = (await rings_of(h, "c1"))[-1]
    await h.report("report.command_refused", "c1", command="command.ring", reason="wrong_state",
                   offer_id=ring["offer_id"])
    assert not (await h.store.call("c1") or {}).get("skip_agents")
    await hold_ends(h)
    assert [r["agent_id"] for r in await rings_of(h, "c1")] == ["a1", "a1"]


async def test_the_exclusion_goes_with_the_call(h: Harness) -> None:
    await c1_refused_by_a1(h, hold_ends_too=False)
    before = set(await h.redis.keys("*"))
    await h.report("report.call_ended", "c1", by="caller", reason="cancel")
    # nothing new holds it: it is a field of the call's hash, which expires with the ended call
    assert set(await h.redis.keys("*")) <= before
    key = h.store.keys.call("c1")
    assert await h.redis.hget(key, "skip_agents") == b"a1" and await h.redis.ttl(key) > 0
    assert [d["reason"] for _, d in await h.events("call.agent_failed")] == ["refused"]
    ended = [d for _, d in await h.events("call.ended")]
    assert len(ended) == 1 and ended[0]["attempts"] == 1 and ended[0]["outcome"] == "abandoned"
    # and a new call with the same agent free rings it as usual
    await h.arrive("c2")
    assert [r["agent_id"] for r in await rings_of(h, "c2")] == ["a1"]
