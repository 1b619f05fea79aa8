"""End-to-end call flows through the SIP edge, with SIPp as caller, media servers and agents.

Each test plays the dispatcher with a small script (fact -> command) and asserts on SIPp's exit
codes (0 = the scenario, including every expected BYE/CANCEL/ACK body, completed) and on the
sequence of facts.
"""

from __future__ import annotations

import asyncio

import sip_harness
from sip_harness import EdgeUnderTest, SippLauncher, agent_at_once, edge_sent_problems, expect_success, support_caller


async def _connected_and_ended(edge: EdgeUnderTest, sipp: SippLauncher, agent_scenario: str,
                               caller_scenario: str) -> tuple[sip_harness.SippProcess, sip_harness.SippProcess]:
    """A caller rung to an agent at once, to its end: both scenarios passed, and the dispatcher heard
    of the arrival, the answer and the end, nothing else. Returns (caller, agent)."""
    agent = agent_at_once(edge, sipp, agent_scenario)
    caller = support_caller(sipp, edge, caller_scenario)
    await expect_success(caller, agent)
    await edge.dispatcher.wait_for("call_ended")
    assert edge.dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]
    return caller, agent


async def test_welcome_then_queue_then_agent_caller_hangs_up(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    welcome = sipp.start("media_welcome_uas", name="welcome")
    queue = sipp.start("media_queue_late_uas", name="queue")
    agent = sipp.start("agent_late_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, welcome.uri("welcome"), "welcome"))
    dispatcher.on("media_ended", lambda f: stack.media(f.call_id, queue.uri("queue", ";cc_pos=0"), "queue"),
                  purpose="welcome")
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "offer-1", "agent-7", agent.uri("agent"), 10.0,
                                                         caller_display='Support "VIP" Ann'), purpose="queue")
    caller = support_caller(sipp, edge, "caller_reinvited_2_bye")

    await expect_success(caller, welcome, queue, agent)
    ended = await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "media_ended", "media_answered",
                                  "agent_answered", "call_ended"]
    arrived = dispatcher.facts[0]
    assert arrived.data["flow"] == "support"
    assert arrived.data["caller"] == "caller1"
    assert arrived.data["caller_display"] == "Ann Caller"
    assert arrived.data["source"] == f"127.0.0.1:{caller.port}"
    assert arrived.data["caller_uri"].startswith("sip:caller1@127.0.0.1")
    assert [f.data.get("purpose") for f in dispatcher.facts[1:4]] == ["welcome", "welcome", "queue"]
    assert dispatcher.facts[4].data == {"offer_id": "offer-1", "agent_id": "agent-7"}
    assert ended.data == {"by": "caller", "reason": "bye", "code": None}
    assert len({f.call_id for f in dispatcher.facts}) == 1
    assert all(isinstance(f.ts_ms, int) for f in dispatcher.facts)
    # the agent saw the display name the dispatcher chose (escaped), the queue its position parameter
    assert 'From: "Support \\"VIP\\" Ann" <sip:caller1@' in agent.traces()
    assert ";cc_pos=0 SIP/2.0" in queue.traces()
    assert stack.active_calls() == 0
    # every peer took the edge's Contact as it stands ([next_url]); all the edge sent is RFC 3261
    assert edge_sent_problems(caller, welcome, queue, agent) == []


async def test_unanswered_caller_rung_to_agent_with_early_offer(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    await _connected_and_ended(edge, sipp, "agent_early_uas", "caller_answered_bye")
    assert edge.dispatcher.facts[-1].data["by"] == "caller"


async def test_busy_agent_keeps_caller_on_queue_then_second_agent(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    busy = sipp.start("agent_busy_uas", name="busy-agent")
    agent = sipp.start("agent_late_uas", name="agent")
    queue_up_when_busy: list[bool] = []

    def second_offer(fact) -> None:
        queue_up_when_busy.append(music.running())
        stack.ring(fact.call_id, "o2", "a2", agent.uri("agent"), 10.0)

    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", busy.uri("agent"), 10.0))
    dispatcher.on("agent_failed", second_offer)
    caller = support_caller(sipp, edge, "caller_reinvited_1_bye")

    await expect_success(caller, music, busy, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_failed", "agent_answered", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a1", "reason": "busy", "code": 486}
    assert dispatcher.facts[3].data["offer_id"] == "o2"
    assert queue_up_when_busy == [True], "the queue media leg must stay up while agents are tried"


async def test_agent_not_answering_is_cancelled_after_timeout(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    agent = sipp.start("agent_noanswer_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 1.0))
    dispatcher.on("agent_failed", lambda f: stack.hangup(f.call_id, "no_agent"))
    caller = support_caller(sipp, edge, "caller_answered_wait_bye")

    await expect_success(caller, music, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_failed", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a1", "reason": "no_answer", "code": None}
    assert dispatcher.facts[3].data == {"by": "edge", "reason": "no_agent", "code": None}


async def test_caller_glare_491_is_retried(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    agent = sipp.start("agent_late_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
    caller = support_caller(sipp, edge, "caller_reinvite_glare_bye")

    await expect_success(caller, music, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_answered", "call_ended"]


async def test_queued_reinvite_waits_for_the_ack_of_the_previous_one(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    """The agent answers while the caller's re-INVITE to the queue media is still unanswered: the
    agent's re-INVITE waits, and goes out only after the ACK of the queue's (seen at 150 calls/s:
    the caller got the new INVITE first and aborted the call)."""
    stack, dispatcher = edge.stack, edge.dispatcher
    welcome = sipp.start("media_welcome_uas", name="welcome")
    queue = sipp.start("media_queue_late_uas", name="queue")
    agent = sipp.start("agent_late_uas", name="agent")

    def queue_and_ring(fact) -> None:  # type: ignore[no-untyped-def]
        stack.media(fact.call_id, queue.uri("queue", ";cc_pos=0"), "queue")
        stack.ring(fact.call_id, "o1", "a1", agent.uri("agent"), 10.0)

    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, welcome.uri("welcome"), "welcome"))
    dispatcher.on("media_ended", queue_and_ring, purpose="welcome")
    caller = support_caller(sipp, edge, "caller_slow_reinvite_answer_2_bye")

    await expect_success(caller, welcome, queue, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "media_ended", "media_answered",
                                  "agent_answered", "call_ended"]
    assert stack.active_calls() == 0


async def test_cancel_ring_on_dispatcher_request(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = agent_at_once(edge, sipp, "agent_noanswer_uas")
    caller = sipp.start("caller_rejected_404", name="caller", remote_port=edge.port, service="support")
    call = await dispatcher.wait_for("call_arrived")
    await asyncio.sleep(0.3)
    stack.cancel_ring(call.call_id, "o1")
    await dispatcher.wait_for("agent_failed")
    stack.reject(call.call_id, 404, "no_agent")

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.facts[1].data["reason"] == "cancelled"
    assert dispatcher.facts[2].data == {"by": "edge", "reason": "no_agent", "code": 404}


async def test_caller_cancel_while_agent_rings(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    dispatcher = edge.dispatcher
    agent = agent_at_once(edge, sipp, "agent_noanswer_uas")
    caller = sipp.start("caller_cancel", name="caller", remote_port=edge.port, service="support")

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "call_ended"]
    assert dispatcher.facts[-1].data == {"by": "caller", "reason": "cancel", "code": None}


async def test_caller_hangs_up_while_queued(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    welcome = sipp.start("media_welcome_uas", name="welcome")
    queue = sipp.start("media_queue_late_uas", name="queue")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, welcome.uri("welcome"), "welcome"))
    dispatcher.on("media_ended", lambda f: stack.media(f.call_id, queue.uri("queue", ";cc_pos=3"), "queue"))
    caller = support_caller(sipp, edge, "caller_reinvited_1_bye", pause_ms=300)

    await expect_success(caller, welcome, queue)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "media_ended", "media_answered", "call_ended"]
    assert dispatcher.facts[-1].data == {"by": "caller", "reason": "bye", "code": None}


async def test_agent_hangs_up_first(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    await _connected_and_ended(edge, sipp, "agent_early_hangup_uas", "caller_answered_wait_bye")
    assert edge.dispatcher.facts[-1].data == {"by": "agent", "reason": "bye", "code": None}


async def test_caller_update_and_reinvite_reach_agent(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    _, agent = await _connected_and_ended(edge, sipp, "agent_early_reinvited_uas", "caller_update_reinvite")
    # the caller's hold (UPDATE) reached the agent as a re-INVITE carrying a=sendonly
    assert "a=sendonly" in agent.traces()


async def test_agent_contact_with_upper_case_transport_gets_bye(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    await _connected_and_ended(edge, sipp, "agent_early_transport_upper_uas", "caller_answered_bye")


async def test_reject_on_arrival(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    dispatcher.on("call_arrived", lambda f: stack.reject(f.call_id, 404, "unknown_flow"))
    caller = sipp.start("caller_rejected_404", name="caller", remote_port=edge.port, service="nosuchflow")

    await expect_success(caller)
    ended = await dispatcher.wait_for("call_ended")
    assert ended.data == {"by": "edge", "reason": "unknown_flow", "code": 404}
    assert dispatcher.facts[0].data["flow"] == "nosuchflow"


async def test_media_failure_is_reported_and_caller_rejected(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    busy_media = sipp.start("agent_busy_uas", name="broken-media")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, busy_media.uri("welcome"), "welcome"))
    dispatcher.on("media_failed", lambda f: stack.reject(f.call_id, 404, "media_failed"))
    caller = sipp.start("caller_rejected_404", name="caller", remote_port=edge.port, service="support")

    await expect_success(caller, busy_media)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_failed", "call_ended"]
    assert dispatcher.facts[1].data == {"purpose": "welcome", "code": 486, "reason": "Busy Here"}



async def test_caller_priority_header_is_reported(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    dispatcher.on("call_arrived", lambda f: stack.reject(f.call_id, 404, "unknown_flow"))
    caller = sipp.start("caller_priority_rejected_404", name="caller", remote_port=edge.port, service="vip")
    await expect_success(caller)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.facts[0].data["priority"] == 7


async def test_ring_all_first_answer_wins_the_other_phone_gets_cancel(edge: EdgeUnderTest,
                                                                      sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    quick = sipp.start("agent_late_uas", name="quick-agent")
    slow = sipp.start("agent_noanswer_uas", name="slow-agent")
    targets = [{"agent_id": "a-slow", "uri": slow.uri("agent")}, {"agent_id": "a-quick", "uri": quick.uri("agent")}]
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring_all(f.call_id, "o1", targets, 10.0))
    caller = support_caller(sipp, edge, "caller_reinvited_1_bye")

    await expect_success(caller, music, quick, slow)  # the slow phone saw CANCEL, 487, ACK
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_failed", "agent_answered", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a-slow", "reason": "answered_elsewhere",
                                        "code": None}
    assert dispatcher.facts[3].data == {"offer_id": "o1", "agent_id": "a-quick"}
    assert stack.active_calls() == 0


async def test_ring_all_nobody_answers(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    phones = [sipp.start("agent_noanswer_uas", name=f"agent-{i}") for i in range(2)]
    targets = [{"agent_id": f"a{i}", "uri": p.uri("agent")} for i, p in enumerate(phones)]
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring_all(f.call_id, "o1", targets, 1.0))
    failures: list[str] = []

    def failed(fact) -> None:  # type: ignore[no-untyped-def]
        failures.append(fact.data["agent_id"])
        if len(failures) == 2:
            stack.hangup(fact.call_id, "no_agent")

    dispatcher.on("agent_failed", failed, once=False)
    caller = support_caller(sipp, edge, "caller_answered_wait_bye")
    await expect_success(caller, music, *phones)
    await dispatcher.wait_for("call_ended")
    assert sorted(failures) == ["a0", "a1"]
    assert all(f.data["reason"] == "no_answer" for f in dispatcher.facts if f.kind == "agent_failed")
