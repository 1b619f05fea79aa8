"""A phone's 200 OK crossing the edge's CANCEL: the edge must ACK that 200, then send BYE, in that
order, and report nothing more than the failed offer it had already reported.

The phone (tests/sipp/agent_answers_across_cancel_uas.xml) rings, and answers the INVITE with 200
once the CANCEL has come; it fails unless it then gets ACK before BYE. sippy sent the BYE first
(sippy/patches.py, _ack_before_bye_when_a_200_crosses_the_cancel). The scripted dispatcher plays the
dispatcher; tests/e2e/test_call_paths_more.py runs the ring-all case with the real one.
"""

from __future__ import annotations

from sip_harness import EdgeUnderTest, SippLauncher, expect_success


async def test_ring_all_the_losing_phone_answers_across_the_cancel_and_gets_ack_then_bye(
        edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    quick = sipp.start("agent_late_uas", name="quick-agent")             # answers after 200 ms
    late = sipp.start("agent_answers_across_cancel_uas", name="late-agent")
    targets = [{"agent_id": "a-late", "uri": late.uri("agent")}, {"agent_id": "a-quick", "uri": quick.uri("agent")}]
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring_all(f.call_id, "o1", targets, 10.0))
    caller = sipp.start("caller_reinvited_1_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=500)

    await expect_success(caller, music, quick, late)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_failed", "agent_answered", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a-late", "reason": "answered_elsewhere",
                                        "code": None}
    assert dispatcher.facts[3].data == {"offer_id": "o1", "agent_id": "a-quick"}
    assert "s=late-agent" not in caller.traces()  # the late phone's offer went nowhere
    assert stack.active_calls() == 0


async def test_ring_timeout_the_phone_answers_across_the_cancel_and_gets_ack_then_bye(
        edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    late = sipp.start("agent_answers_across_cancel_uas", name="late-agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a-late", late.uri("agent"), 1.0))
    dispatcher.on("agent_failed", lambda f: stack.hangup(f.call_id, "no_agent"))
    caller = sipp.start("caller_answered_wait_bye", name="caller", remote_port=edge.port, service="support")

    await expect_success(caller, music, late)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_failed", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a-late", "reason": "no_answer", "code": None}
    assert "s=late-agent" not in caller.traces()
    assert stack.active_calls() == 0
