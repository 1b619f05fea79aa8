"""The events carry what a CDR row needs (issue 12): each agent attempt that did not connect is a
numbered `call.agent_failed` with the call's fields and the agent's ring time, and `call.ended`
carries the SIP Call-ID, edge, priority, queue position at entry, hold time, dissuading and overflow."""

from __future__ import annotations

from lua_harness import EDGE, T0, Harness


async def test_attempts_are_numbered_with_ring_time_and_the_summary_has_the_cdr_fields(h: Harness) -> None:
    await h.flow(wrapup_s=30)
    await h.agent("a1", ["sales"], wrapup_s=30)
    await h.agent("a2", ["sales"], wrapup_s=30)
    await h.arrive("c1")  # queued until the queue media answers the caller, then offered (offer 1)
    offered = [d for _, d in await h.events("call.offered")]
    assert [d["offer_id"] for d in offered] == ["1"]
    first = offered[0]["agent_id"]
    h.now += 3000
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id=first, reason="rejected", code=603)
    second = [d for _, d in await h.events("call.offered")][-1]["agent_id"]
    assert second != first
    h.now += 20_000
    await h.report("report.agent_failed", "c1", offer_id="2", agent_id=second, reason="no_answer")
    # both agents wrap up: the call waits at the head of the queue
    h.now += 5000
    await h.report("report.call_ended", "c1", by="caller", reason="bye")

    arrived = [d for _, d in await h.events("call.arrived")]
    assert arrived[0]["sip_call_id"] == "c1@x"
    failed = [d for _, d in await h.events("call.agent_failed")]
    common = {"call_id": "c1", "flow": "support", "caller": "alice", "received_ms": T0, "media_type": "audio",
              "sip_call_id": "c1@x", "edge": EDGE, "priority": 0, "queue_position": 0}
    assert failed == [
        {**common, "ts": T0 + 3000, "agent_id": first, "offer_id": "1", "reason": "rejected", "attempt": 1,
         "ring_ms": 3000, "wait_ms": 3000, "rejections": 0},
        {**common, "ts": T0 + 23_000, "agent_id": second, "offer_id": "2", "reason": "no_answer", "attempt": 2,
         "ring_ms": 20_000, "wait_ms": 23_000, "rejections": 1},
    ]
    ended = [d for _, d in await h.events("call.ended")]
    assert ended == [{**common, "ts": T0 + 28_000, "outcome": "abandoned", "ended_by": "caller", "reason": "bye",
                      "wait_ms": 28_000, "pickup_ms": 0, "talk_ms": 0, "rejections": 2, "attempts": 2, "offers": 2,
                      "hold_ms": 28_000}]  # in the queue from its arrival (media first) to its end


async def test_a_redelivered_failure_gets_no_new_attempt_number(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    # seq 2 was the queue media's answer (the caller on our media), which made the offer
    await h.report("report.agent_failed", "c1", seq=3, offer_id="1", agent_id="a1", reason="busy")
    await h.report("report.agent_failed", "c1", seq=3, offer_id="1", agent_id="a1", reason="busy")
    assert [d["attempt"] for _, d in await h.events("call.agent_failed")] == [1]


async def test_summary_says_where_a_call_was_dissuaded_and_overflowed(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.flow("spill", skill="nobody")
    await h.flow(max_wait_s=10, overflow_flow="spill")
    await h.arrive("c1")  # queued: nobody is logged in
    h.now += 10_000
    await h.store.fire_timers(now=h.now)
    h.now += 1000
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    ended = next(d for _, d in await h.events("call.ended"))
    assert (ended["flow"], ended["overflow_to_flow"], ended["queue_position"], ended["hold_ms"]) == (
        "spill", "spill", 0, 11_000)
    assert "dissuaded_rule" not in ended and "overflow_to_uri" not in ended

    await h.flow("deter", dissuading_uri="sip:sorry@127.0.0.1:7002", dissuading_qsize_th=1)
    await h.arrive("d1", flow="deter")
    await h.arrive("d2", flow="deter")  # one call ahead: dissuaded
    await h.report("report.call_ended", "d2", by="caller", reason="bye")
    ended = next(d for _, d in await h.events("call.ended") if d["call_id"] == "d2")
    assert ended["dissuaded_rule"] == "queue_size"
