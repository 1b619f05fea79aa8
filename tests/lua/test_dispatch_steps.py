"""The atomic Lua steps against a real redis-server, with a controlled clock."""

from __future__ import annotations

from lua_harness import EDGE, T0, Harness, rings

from callcenter.store import RC


async def test_welcome_then_queue_then_agent_login_gets_call(h: Harness) -> None:
    await h.flow(welcome_uri="sip:welcome@127.0.0.1:7001")
    await h.agent("a1", ["sales"], login=False)
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)

    assert (await h.arrive("c1")).detail == "welcome"
    await h.report("report.media_answered", "c1", purpose="welcome", uri="sip:welcome@127.0.0.1:7001")
    res = await h.report("report.media_ended", "c1", purpose="welcome")
    assert res.detail == "queued"
    cmds = await h.commands()
    assert cmds[0] == ("command.media", {"call_id": "c1", "uri": "sip:welcome@127.0.0.1:7001", "purpose": "welcome"})
    assert cmds[1] == ("command.media", {"call_id": "c1", "uri": "sip:queue@127.0.0.1:7000;cc_pos=0",
                                         "purpose": "queue"})

    # the login hands the waiting call to the agent in the same atomic step
    login = await h.store.agent_login("a1", now=h.now)
    assert (login.rc, login.detail) == (RC.OK, "ringing")
    ring = (await h.commands())[2]
    assert ring[0] == "command.ring"
    assert ring[1]["agent_id"] == "a1" and ring[1]["uri"] == "sip:a1@127.0.0.1:7100" and ring[1]["offer_id"] == "1"

    h.now += 2000
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    assert await h.state("a1") == "in_call"
    h.now += 5000
    res = await h.report("report.call_ended", "c1", by="caller", reason="bye")
    assert res.detail == "answered"
    assert await h.state("a1") == "wrap_up"

    ended = [d for t, d in await h.events("call.ended")]
    assert len(ended) == 1
    cdr = ended[0]
    assert cdr["outcome"] == "answered" and cdr["agent_id"] == "a1" and cdr["talk_ms"] == 5000
    assert cdr["wait_ms"] == 2000 and cdr["pickup_ms"] == 2000 and cdr["received_ms"] == T0

    # wrap-up (30 s default) ends through the timer step, not before
    h.now += 29_000
    assert await h.store.fire_timers(now=h.now) == 0
    h.now += 1_000
    assert await h.store.fire_timers(now=h.now) == 1
    assert await h.state("a1") == "free"
    types = [t for t, _ in await h.events()]
    assert types.index("call.welcome_ended") < types.index("call.queued") < types.index("call.offered") \
        < types.index("call.connected") < types.index("call.ended")


async def test_free_agent_gets_call_at_once_longest_idle_first(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    h.now += 10
    await h.agent("a2", ["sales"])
    assert (await h.arrive("c1")).detail == "offered"
    assert rings(await h.commands())[0]["agent_id"] == "a1"
    assert (await h.arrive("c2")).detail == "offered"
    assert rings(await h.commands())[1]["agent_id"] == "a2"
    assert (await h.arrive("c3")).detail == "queued"


async def test_unknown_flow_and_no_agents_are_rejected(h: Harness) -> None:
    await h.flow()
    await h.arrive("c1", flow="nope")
    await h.arrive("c2")
    cmds = await h.commands()
    assert cmds[0] == ("command.reject", {"call_id": "c1", "code": 404, "reason": "Not Found"})
    assert cmds[1][0] == "command.reject" and cmds[1][1]["code"] == 480
    rejected = [d["reason"] for _, d in await h.events("call.rejected")]
    assert rejected == ["unknown_flow", "no_agents"]
    outcomes = [d["outcome"] for _, d in await h.events("call.ended")]
    assert outcomes == ["rejected", "rejected"]
    # the edge's later report of the ended call is a harmless no-op
    res = await h.report("report.call_ended", "c1", by="edge", reason="rejected")
    assert res.rc is RC.OK
    assert len(await h.events("call.ended")) == 2


async def test_duplicate_and_out_of_order_reports(h: Harness) -> None:
    await h.flow(welcome_uri="sip:w@127.0.0.1:1")
    await h.agent("a1", ["sales"])
    assert (await h.arrive("c1")).rc is RC.OK
    assert (await h.report("report.call_arrived", "c1", seq=1, flow="support", caller="alice",
                           caller_uri="sip:alice@x", sip_call_id="x", source="1")).rc is RC.DUPLICATE
    # seq 3 before seq 2: must wait
    assert (await h.report("report.media_ended", "c1", seq=3, purpose="welcome")).rc is RC.OUT_OF_ORDER
    assert (await h.report("report.media_answered", "c1", seq=2, purpose="welcome", uri="x")).rc is RC.OK
    assert (await h.report("report.media_ended", "c1", seq=3, purpose="welcome")).rc is RC.OK
    assert (await h.report("report.media_ended", "c1", seq=3, purpose="welcome")).rc is RC.DUPLICATE
    assert len(await h.events("call.offered")) == 1
    # a report about a call that never arrived waits for the arrival
    assert (await h.report("report.media_ended", "zz", seq=2, purpose="welcome")).rc is RC.OUT_OF_ORDER


async def test_agent_reject_requeues_at_head_and_penalises_agent(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=10)
    await h.arrive("c1")  # offered to a1 at once
    await h.agent("a2", ["sales"], login=False)
    h.now += 100
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.arrive("c2")  # queued behind nobody
    res = await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="busy", code=486)
    assert res.rc is RC.OK
    assert await h.state("a1") == "wrap_up"
    queue = await h.redis.zrange(h.store.keys.queue("support"), 0, -1)
    assert queue == [b"c1", b"c2"]  # back at the head, ahead of the later call
    # the next free agent takes the rejected call first
    login = await h.store.agent_login("a2", now=h.now)
    assert login.detail == "ringing"
    ring = [d for t, d in await h.commands() if t == "command.ring"][-1]
    assert ring["call_id"] == "c1" and ring["offer_id"] == "2"
    failed = [d for _, d in await h.events("call.agent_failed")]
    assert failed[0]["reason"] == "busy"


async def test_offer_lease_expiry_cancels_ring_and_requeues(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    h.now += (20 + 15) * 1000
    assert await h.store.fire_timers(now=h.now) == 1
    cmds = await h.commands()
    # the caller has stayed on the queue media it was offered from (offered once on media)
    assert [d["purpose"] for t, d in cmds if t == "command.media"] == ["queue"]
    assert cmds[-1] == ("command.cancel_ring", {"call_id": "c1", "offer_id": "1"})
    assert await h.state("a1") == "wrap_up"
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "queued"


async def test_caller_abandons_while_ringing_frees_agent_without_wrapup(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    assert await h.state("a1") == "ringing"
    h.now += 3000
    res = await h.report("report.call_ended", "c1", by="caller", reason="cancel")
    assert res.detail == "abandoned"
    assert await h.state("a1") == "free"
    ab = await h.events("call.abandoned")
    assert ab[0][1]["stage"] == "offered" and ab[0][1]["wait_ms"] == 3000
    # the lease timer of the dead offer is gone
    assert await h.redis.zcard(h.store.keys.timers) == 0


async def test_logout_during_call_takes_effect_at_call_end(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    res = await h.store.agent_logout("a1", now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "pending")
    assert await h.state("a1") == "in_call"
    # no agent counts as logged in any more: a new call is rejected
    await h.arrive("c2")
    assert (await h.commands())[-1][1]["code"] == 480
    await h.report("report.call_ended", "c1", by="agent", reason="bye")
    assert await h.state("a1") == "logged_out"
    assert [d["agent_id"] for _, d in await h.events("agent.logged_out")] == ["a1"]


async def test_flow_priority_orders_waiting_calls_across_flows(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.flow("low", skill="sales", priority=10)
    await h.flow("vip", skill="sales", priority=0)
    await h.arrive("c-low", flow="low")
    h.now += 1000
    await h.arrive("c-vip", flow="vip")
    await h.agent("a1", ["sales"])
    ring = [d for t, d in await h.commands() if t == "command.ring"]
    assert ring[0]["call_id"] == "c-vip"


async def test_media_hangup_in_queue_rebridges_to_queue(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.flow()
    await h.arrive("c1")
    res = await h.report("report.media_ended", "c1", purpose="queue")
    assert res.detail == "requeued_media"
    media = [d for t, d in await h.commands() if t == "command.media"]
    assert len(media) == 2 and media[1]["purpose"] == "queue"


async def test_wrapup_is_capped_by_flow_and_per_agent_value_wins(h: Harness) -> None:
    await h.flow(max_wrapup_s=5)
    await h.agent("a1", ["sales"], wrapup_s=60)
    await h.arrive("c1")
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    agent = await h.store.agent("a1")
    assert agent is not None and int(agent["wrapup_end_ms"]) == h.now + 5000


async def test_login_unknown_agent_is_not_found(h: Harness) -> None:
    res = await h.store.agent_login("ghost", now=h.now)
    assert res.rc is RC.NOT_FOUND


async def test_edge_call_index_follows_the_calls(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    assert await h.redis.smembers(h.store.keys.edge_calls(EDGE)) == {b"c1"}
    await h.report("report.call_ended", "c1", by="caller", reason="cancel")
    assert await h.redis.scard(h.store.keys.edge_calls(EDGE)) == 0
