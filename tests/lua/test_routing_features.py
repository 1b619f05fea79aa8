"""Routing features beyond the first call path: pause, max-no-answer, call priority, strategies,
external dispatching, statistics, service level, the reconciler, force release, maximum wait with
overflow, dissuading and the estimated wait. Real redis-server, controlled clock."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import Harness, rings

from callcenter.store import RC
from callcenter.store.reads import Reads


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    return await Harness.configured(redis, reject_on_no_agents=0)


async def test_pause_with_reason_and_unpause_takes_waiting_call(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    res = await h.store.agent_pause("a1", "lunch", now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "paused")
    assert await h.state("a1") == "paused"
    assert (await h.arrive("c1")).detail == "queued"  # a paused agent gets no call
    res = await h.store.agent_unpause("a1", now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "ringing")
    assert [d["reason"] for _, d in await h.events("agent.paused")] == ["lunch"]
    assert len(await h.events("agent.unpaused")) == 1


async def test_pause_during_a_call_starts_when_it_ends_without_wrapup(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    assert (await h.store.agent_pause("a1", "break", now=h.now)).detail == "pending"
    assert await h.state("a1") == "in_call"
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    assert await h.state("a1") == "paused"
    agent = await h.store.agent("a1")
    assert agent is not None and agent["pause_reason"] == "break"


async def test_max_no_answer_pauses_the_agent(h: Harness) -> None:
    await h.flow()
    await h.store.agent_upsert("a1", "sip:a1@127.0.0.1:1", ["sales"], 0, now=h.now, max_no_answer=2)
    await h.store.agent_login("a1", now=h.now)
    await h.arrive("c1")
    h.now += 20_000  # rung out
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="no_answer")
    assert await h.state("a1") == "ringing"  # wrap-up 0: offered again at once (first miss)
    h.now += 20_000
    await h.report("report.agent_failed", "c1", offer_id="2", agent_id="a1", reason="no_answer")
    assert await h.state("a1") == "paused"
    assert [d["reason"] for _, d in await h.events("agent.paused")] == ["no-answer"]
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "queued"


async def test_caller_priority_goes_ahead_in_the_queue(h: Harness) -> None:
    await h.flow()
    await h.arrive("c-normal")
    h.now += 1000
    await h.report("report.call_arrived", "c-vip", flow="support", caller="vip", caller_uri="sip:vip@x",
                   sip_call_id="v", source="1", priority=5)
    await h.on_media("c-vip")
    queue = await h.redis.zrange(h.store.keys.queue("support"), 0, -1)
    assert queue == [b"c-vip", b"c-normal"]
    await h.agent("a1", ["sales"])
    assert rings(await h.commands())[0]["call_id"] == "c-vip"


@pytest.mark.parametrize(("strategy", "expected"), [
    ("longest-idle", "a3"), ("top-down", "a1"), ("fewest-calls", "a2"), ("least-talk-time", "a1"),
])
async def test_strategies_choose_the_agent(h: Harness, strategy: str, expected: str) -> None:
    await h.flow(strategy=strategy)
    for agent_id, answered, talk in (("a3", 5, 900), ("a1", 3, 100), ("a2", 1, 500)):
        await h.agent(agent_id, ["sales"])
        await h.redis.hset(h.store.keys.agent(agent_id), mapping={"answered": answered, "talk_ms": talk})
        h.now += 10
    await h.arrive("c1")
    assert rings(await h.commands())[0]["agent_id"] == expected


async def test_round_robin_rotates(h: Harness) -> None:
    await h.flow(strategy="round-robin")
    for agent_id in ("a1", "a2", "a3"):
        await h.agent(agent_id, ["sales"], wrapup_s=0)
    chosen = []
    for i in range(4):
        await h.arrive(f"c{i}")
        ring = rings(await h.commands())[-1]
        chosen.append(ring["agent_id"])
        await h.report("report.call_ended", f"c{i}", by="caller", reason="cancel")
    assert chosen == ["a1", "a2", "a3", "a1"]


async def test_random_strategy_picks_a_free_agent(h: Harness) -> None:
    await h.flow(strategy="random")
    await h.agent("a1", ["sales"])
    await h.agent("a2", ["other"])
    await h.arrive("c1")
    assert rings(await h.commands())[0]["agent_id"] == "a1"


async def test_internal_dispatching_off_and_external_dispatch(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "internal_dispatching", 0)
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.agent("a2", ["other"])
    assert (await h.arrive("c1")).detail == "queued"  # a free agent, but nobody dispatches
    res = await h.store.dispatch_call("c1", "a2", now=h.now)
    assert res.rc is RC.INVALID and "skill" in res.detail
    assert (await h.store.dispatch_call("nope", "a1", now=h.now)).detail == "call"
    assert (await h.store.dispatch_call("c1", "a1", now=h.now)).rc is RC.OK
    assert rings(await h.commands())[0]["agent_id"] == "a1"
    res = await h.store.dispatch_call("c1", "a1", now=h.now)
    assert res.rc is RC.INVALID and "offered" in res.detail


async def test_statistics_and_service_level_add_up(h: Harness) -> None:
    await h.flow(sl_threshold_s=10)
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.arrive("c1")                       # answered after 2 s, talks 30 s
    h.now += 2000
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    await h.arrive("c2")                       # queued behind, abandons after 15 s
    h.now += 15_000
    await h.report("report.call_ended", "c2", by="caller", reason="bye")
    h.now += 15_000
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    f = {k.decode(): int(v) for k, v in (await h.redis.hgetall("cc:{t}:stats:flow:support")).items()}
    assert f["incalls"] == 2 and f["distributed"] == 1 and f["answered"] == 1 and f["abandoned"] == 1
    assert f["onhold"] == 0 and f["talk_sum_ms"] == 30_000 and f["talk_n"] == 1
    assert f["awt_sum_ms"] == 2000 + 15_000 and f["awt_n"] == 2 and f["aht_ema_ms"] == 30_000
    # the tenant's totals, as the api reads them (the sum of its flows' counters)
    stats = await Reads(h.redis, h.store.keys).stats()
    for s in (stats.global_, stats.flows[0]):
        assert (s.incalls, s.distributed, s.answered, s.abandoned, s.onhold) == (2, 1, 1, 1, 0)
        assert (s.att_ms, s.talk_n, s.awt_ms) == (30_000, 1, (2000 + 15_000) // 2)
    minute_keys = await h.redis.keys("cc:{t}:sl:support:*")
    totals: dict[str, int] = {}
    for key in minute_keys:
        for k, v in (await h.redis.hgetall(key)).items():
            totals[k.decode()] = totals.get(k.decode(), 0) + int(v)
    assert totals == {"offered": 2, "answered": 1, "answered_in_t": 1, "abandoned": 1}
    agent = await h.store.agent("a1")
    assert agent is not None and agent["answered"] == "1" and agent["talk_ms"] == "30000"
    await h.store.stats_reset(now=h.now)
    after = {k.decode() for k in await h.redis.hgetall("cc:{t}:stats:flow:support")}
    assert "incalls" not in after and "onhold" in after
    assert (await Reads(h.redis, h.store.keys).stats()).global_.incalls == 0


async def test_onhold_gauge_follows_waiting_calls(h: Harness) -> None:
    await h.flow()
    await h.arrive("c1")
    await h.arrive("c2")
    assert (await Reads(h.redis, h.store.keys).stats()).global_.onhold == 2
    await h.agent("a1", ["sales"])
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    assert (await Reads(h.redis, h.store.keys).stats()).global_.onhold == 1
    await h.report("report.call_ended", "c2", by="caller", reason="bye")
    assert await h.redis.hget("cc:{t}:stats:flow:support", "onhold") == b"0"


async def test_reconciler_frees_an_agent_no_live_call_holds(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.agent("a2", ["sales"])
    await h.arrive("c1")  # a1 rings for c1: consistent, must stay
    await h.redis.hset(h.store.keys.agent("a2"), mapping={"state": "in_call", "call": "ghost"})
    await h.redis.zrem(h.store.keys.skill_free("sales"), "a2")
    assert await h.store.reconcile(now=h.now) == (1, 0)
    assert await h.state("a2") == "free" and await h.state("a1") == "ringing"
    released = await h.events("agent.released")
    assert released[0][1] == {"agent_id": "a2", "reason": "no_live_call", "from": "in_call", "call_id": "ghost",
                              "ts": h.now}
    assert await h.store.reconcile(now=h.now) == (0, 0)


async def test_force_release_hangs_up_the_call_and_frees_the_agent(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    res = await h.store.agent_release("a1", now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "free")
    assert ("command.hangup", {"call_id": "c1", "reason": "force_release"}) in await h.commands()
    ended = [d for _, d in await h.events("call.ended")]
    assert ended[0]["outcome"] == "failed" and ended[0]["reason"] == "force_release"
    assert (await h.store.agent_release("a1", now=h.now)).rc is RC.ALREADY


async def test_max_wait_overflows_to_another_flow(h: Harness) -> None:
    await h.flow("overflow", skill="backup")
    await h.flow(max_wait_s=60, overflow_flow="overflow")
    await h.agent("b1", ["backup"])
    await h.redis.hset(h.store.keys.agent("b1"), "state", "paused")  # busy for now
    await h.redis.zrem(h.store.keys.skill_free("backup"), "b1")
    await h.arrive("c1")
    h.now += 59_000
    assert await h.store.fire_timers(now=h.now) == 0
    await h.redis.hset(h.store.keys.agent("b1"), "state", "free")
    await h.redis.zadd(h.store.keys.skill_free("backup"), {"b1": 0})
    h.now += 1_000
    assert await h.store.fire_timers(now=h.now) == 1
    assert [d.get("to_flow") for _, d in await h.events("call.overflowed")] == ["overflow"]
    ring = rings(await h.commands())[0]
    assert ring["agent_id"] == "b1" and ring["call_id"] == "c1"
    assert (await h.store.call("c1") or {})["flow"] == "overflow"


async def test_max_wait_overflows_to_a_sip_uri(h: Harness) -> None:
    await h.flow(max_wait_s=30, overflow_uri="sip:voicemail@127.0.0.1:7200")
    await h.arrive("c1")
    h.now += 30_000
    await h.store.fire_timers(now=h.now)
    media = [d for t, d in await h.commands() if t == "command.media"]
    assert media[-1] == {"call_id": "c1", "uri": "sip:voicemail@127.0.0.1:7200", "purpose": "overflow"}
    await h.report("report.media_ended", "c1", purpose="overflow")
    ended = [d for _, d in await h.events("call.ended")]
    assert ended[0]["outcome"] == "overflowed"


async def test_dissuading_on_queue_size_then_hang_up(h: Harness) -> None:
    await h.flow(dissuading_uri="sip:diss@127.0.0.1:7300", dissuading_qsize_th=1, dissuading_hangup=1)
    await h.arrive("c1")                                   # queue empty: queued
    assert (await h.arrive("c2")).detail == "dissuading"  # one waiting >= threshold 1
    media = [d for t, d in await h.commands() if t == "command.media"]
    assert media[-1]["purpose"] == "dissuading" and media[-1]["uri"] == "sip:diss@127.0.0.1:7300"
    await h.report("report.media_ended", "c2", purpose="dissuading")
    assert ("command.hangup", {"call_id": "c2", "reason": "dissuaded"}) in await h.commands()
    outcomes = {d["call_id"]: d["outcome"] for _, d in await h.events("call.ended")}
    assert outcomes == {"c2": "dissuaded"}
    assert [d["rule"] for _, d in await h.events("call.dissuaded")] == ["queue_size"]


async def test_dissuading_on_hold_time_returns_to_the_queue(h: Harness) -> None:
    await h.flow(dissuading_uri="sip:diss@127.0.0.1:7300", dissuading_onhold_th=45)
    await h.arrive("c1")
    h.now += 45_000
    assert await h.store.fire_timers(now=h.now) == 1
    assert (await h.store.call("c1") or {})["state"] == "dissuading"
    res = await h.report("report.media_ended", "c1", purpose="dissuading")
    assert res.detail == "queued"
    media = [d for t, d in await h.commands() if t == "command.media"]
    assert [m["purpose"] for m in media] == ["queue", "dissuading", "queue"]


async def test_queue_media_gets_position_and_estimated_wait(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.agent("a2", ["sales"])
    await h.redis.hset("cc:{t}:stats:flow:support", "aht_ema_ms", 120_000)
    await h.arrive("c1")
    await h.arrive("c2")
    await h.arrive("c3")  # two agents ringing; third call waits at position 0
    media = [d for t, d in await h.commands() if t == "command.media"]
    # estimated wait: (position + 1) x 120 s / 2 logged agents = 60 s
    assert media[0]["uri"] == "sip:queue@127.0.0.1:7000;cc_pos=0;cc_ewt=60"



async def test_missed_offers_are_counted_once(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=5)
    await h.arrive("c1")
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="busy", code=486)
    agent = await h.store.agent("a1")
    assert agent is not None and agent["missed"] == "1" and agent["missed_in_row"] == "1"


async def test_ring_all_rings_every_free_agent_and_the_first_answer_wins(h: Harness) -> None:
    await h.flow(strategy="ring-all")
    for agent_id in ("a1", "a2", "a3"):
        await h.agent(agent_id, ["sales"])
    await h.agent("x1", ["other"])
    assert (await h.arrive("c1")).detail == "offered"
    [cmd] = [d for t, d in await h.commands() if t == "command.ring_all"]
    assert sorted(t["agent_id"] for t in cmd["targets"]) == ["a1", "a2", "a3"]
    assert [await h.state(a) for a in ("a1", "a2", "a3", "x1")] == ["ringing", "ringing", "ringing", "free"]
    # one phone rejects: the others keep ringing
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a3", reason="busy", code=486)
    assert await h.state("a3") == "free"
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a2")
    assert [await h.state(a) for a in ("a1", "a2")] == ["free", "in_call"]
    reasons = {d["agent_id"]: d["reason"] for _, d in await h.events("call.agent_failed")}
    assert reasons == {"a3": "busy", "a1": "answered_elsewhere"}
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    ended = [d for _, d in await h.events("call.ended")]
    assert ended[0]["agent_id"] == "a2" and ended[0]["outcome"] == "answered"
    assert await h.store.reconcile(now=h.now) == (0, 0)


async def test_ring_all_nobody_answers_requeues_without_penalty(h: Harness) -> None:
    await h.flow(strategy="ring-all")
    await h.agent("a1", ["sales"], wrapup_s=30)
    await h.agent("a2", ["sales"], wrapup_s=30)
    await h.arrive("c1")
    assert await h.store.reconcile(now=h.now) == (0, 0)  # both ringing agents are held by the call
    h.now += 15_000   # the phones rang out
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="no_answer")
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a2", reason="no_answer")
    # no wrap-up penalty for a ring-all miss: both free again, and the call is offered to both again
    cmds = [d for t, d in await h.commands() if t == "command.ring_all"]
    assert len(cmds) == 2 and cmds[1]["offer_id"] == "2"
    assert len([1 for _, d in await h.events("call.agent_failed")]) == 2


async def test_ring_all_whose_phones_all_fail_at_once_waits_before_ringing_them_again(h: Harness) -> None:
    """Every phone fails within moments of the ring-all (unreachable, busy): the agents are freed with
    no penalty, and ringing them all again at once would fail again as fast, round after round; the
    call waits at the head of its queue for refused_offer_hold_ms from the offer, then rings again."""
    await h.flow(strategy="ring-all")
    await h.agent("a1", ["sales"])
    await h.agent("a2", ["sales"])
    await h.arrive("c1")
    h.now += 30
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="unreachable")
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a2", reason="busy", code=486)
    ring_alls = [d for t, d in await h.commands() if t == "command.ring_all"]
    assert len(ring_alls) == 1   # not again at once
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "queued" and int(call["held_until_ms"]) > h.now
    assert [await h.state(a) for a in ("a1", "a2")] == ["free", "free"]   # no penalty
    h.now = int(call["held_until_ms"])
    await h.store.fire_timers(now=h.now)
    ring_alls = [d for t, d in await h.commands() if t == "command.ring_all"]
    assert len(ring_alls) == 2 and ring_alls[1]["offer_id"] == "2"
    assert len([1 for _, d in await h.events("call.agent_failed")]) == 2


async def test_ring_all_caller_hangs_up_frees_all_ringing_agents(h: Harness) -> None:
    await h.flow(strategy="ring-all")
    await h.agent("a1", ["sales"])
    await h.agent("a2", ["sales"])
    await h.arrive("c1")
    await h.report("report.call_ended", "c1", by="caller", reason="cancel")
    assert [await h.state(a) for a in ("a1", "a2")] == ["free", "free"]


async def test_a_late_answer_after_the_lease_expired_is_adopted(h: Harness) -> None:
    """The answer sat with a dead dispatcher past the offer lease: the edge connected the caller to
    a1, so Redis follows (a newer offer to a2 is cancelled)."""
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=30)
    await h.arrive("c1")
    h.now += 35_000
    await h.store.fire_timers(now=h.now)          # lease expired: a1 penalised, c1 requeued
    await h.agent("a2", ["sales"])               # ... and offered to a2 (offer 2)
    assert await h.state("a2") == "ringing"
    res = await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    assert (res.rc, res.detail) == (RC.OK, "adopted")
    assert [await h.state(a) for a in ("a1", "a2")] == ["in_call", "free"]
    assert ("command.cancel_ring", {"call_id": "c1", "offer_id": "2"}) in await h.commands()
    assert await h.store.reconcile(now=h.now) == (0, 0)


async def test_a_late_answer_from_a_busy_agent_hangs_the_call_up(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.arrive("c1")
    h.now += 35_000
    await h.store.fire_timers(now=h.now)  # lease expired, wrap-up 0: a1 free and takes c1 again...
    await h.arrive("c2")
    await h.report("report.agent_answered", "c1", offer_id="2", agent_id="a1")  # a1 talks on c1 (offer 2)
    res = await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    assert res.rc is RC.STALE  # same call, already connected: a duplicate answer, nothing to do
    assert await h.state("a1") == "in_call"


async def test_round_robin_position_survives_a_flow_update(h: Harness) -> None:
    await h.flow(strategy="round-robin")
    for agent_id in ("a1", "a2"):
        await h.agent(agent_id, ["sales"], wrapup_s=0)
    await h.arrive("c1")
    await h.report("report.call_ended", "c1", by="caller", reason="cancel")
    await h.flow(strategy="round-robin", priority=3)  # re-provisioned
    await h.arrive("c2")
    assert [d["agent_id"] for t, d in await h.commands() if t == "command.ring"] == ["a1", "a2"]
