"""Callers whose INVITE carries no SDP (late offer): the first leg that answers offers to them.

SIPp's stock `uac` scenario sends its offer in the INVITE, so these callers are our own scenarios
(tests/sipp/caller_late_offer_*.xml). The media servers and agents are the late-offer ones the other
flows use already (INVITE without SDP, offer in their 200, answer expected in the ACK).
"""

from __future__ import annotations

from sip_harness import EdgeUnderTest, SippLauncher, agent_at_once, edge_sent_problems, expect_success, support_caller


async def test_late_offer_caller_queue_media_then_agent(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    """Queue media answers the caller with its offer (ACK with the caller's answer reaches the media
    server), then an agent is connected by re-INVITE as for any caller."""
    stack, dispatcher = edge.stack, edge.dispatcher
    queue = sipp.start("media_queue_late_uas", name="queue")
    agent = sipp.start("agent_late_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, queue.uri("queue", ";cc_pos=0"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
    caller = support_caller(sipp, edge, "caller_late_offer_reinvited_bye")

    await expect_success(caller, queue, agent)
    ended = await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_answered", "call_ended"]
    assert dispatcher.facts[0].data["media_type"] == "audio"
    assert ended.data == {"by": "caller", "reason": "bye", "code": None}
    # the queue media's offer reached the caller in our 200, the caller's answer the queue in its ACK
    queue_offer = next(m for m in queue.messages() if m.is_response(200, "INVITE")).body
    caller_200 = next(m for m in caller.messages() if m.is_response(200, "INVITE")).body
    assert "o=" in queue_offer and queue_offer.split("o=")[1].split()[0] == caller_200.split("o=")[1].split()[0]
    caller_ack = next(m for m in caller.messages() if m.is_request("ACK")).body
    queue_ack = next(m for m in queue.messages() if m.is_request("ACK")).body
    assert "o=caller 1 1" in caller_ack and "o=caller 1 1" in queue_ack
    assert stack.active_calls() == 0
    assert edge_sent_problems(caller, queue, agent) == []


async def test_late_offer_caller_straight_to_agent(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    """No media at all: the agent is INVITEd without SDP, its offer answers the caller, the
    caller's answer goes in the agent's ACK; the agent is reported once the caller ACKed."""
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = agent_at_once(edge, sipp, "agent_late_uas")
    caller = support_caller(sipp, edge, "caller_late_offer_bye")

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]
    agent_ack = next(m for m in agent.messages() if m.is_request("ACK")).body
    assert "o=caller 1 1" in agent_ack
    assert stack.active_calls() == 0


async def test_late_offer_caller_whose_ack_has_no_answer_is_ended(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    queue = sipp.start("media_late_unanswered_uas", name="queue")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, queue.uri("queue", ";cc_pos=0"), "queue"))
    caller = support_caller(sipp, edge, "caller_late_offer_no_answer")

    await expect_success(caller, queue)
    ended = await dispatcher.wait_for("call_ended")
    assert ended.data == {"by": "edge", "reason": "caller_no_sdp", "code": None}
    assert "media_answered" not in dispatcher.kinds()
    assert stack.active_calls() == 0


async def test_late_offer_caller_with_flow_id_message(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    """The whisper path for a late-offer caller: once answered with the queue's offer, the caller
    goes on as any other (the agent hears the message, then the caller is re-INVITEd to it)."""
    stack, dispatcher = edge.stack, edge.dispatcher
    queue = sipp.start("media_queue_late_uas", name="queue")
    agent = sipp.start("agent_whisper_uas", name="agent")
    whisper = sipp.start("whisper_media_uas", name="whisper")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, queue.uri("queue", ";cc_pos=0"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0,
                                                         whisper_uri=whisper.uri("flowid", ";flow=support")))
    caller = support_caller(sipp, edge, "caller_late_offer_reinvited_bye")

    await expect_success(caller, queue, agent, whisper)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_answered", "call_ended"]
    caller_reinvite = next(m for m in caller.messages() if not m.sent and m.is_request("INVITE"))
    assert "s=agent-offer-2" in caller_reinvite.body
    assert stack.active_calls() == 0
