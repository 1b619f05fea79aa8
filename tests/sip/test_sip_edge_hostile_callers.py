"""Hostile callers during the connect: one that never ACKs our 200, one that ACKs but never answers
the re-INVITE that moves it to the agent (issue 10, item 1).

Such a caller is on our media only once its ACK came: `media_answered` (and an early-offer
`agent_answered`) is reported only then, and a caller that does not do its part within a few
seconds (not sippy's 32 s) is hung up with a reason saying so (`caller_no_ack`,
`caller_reinvite_timeout`), so that the dispatcher frees an agent offered the call, unblamed.
"""

from __future__ import annotations

import time

from sip_harness import EdgeUnderTest, SippLauncher, agent_at_once, expect_success, queue_then_agent, support_caller

from callcenter_sip_edge.legs import CALLER_ACK_TIMEOUT_S, CALLER_REINVITE_TIMEOUT_S

# how long past the edge's own timer an outcome may take on a loaded machine
SLACK_S = 6.0


async def test_a_caller_that_never_acks_is_never_on_media_and_is_hung_up_soon(
        edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    started = time.monotonic()
    caller = support_caller(sipp, edge, "caller_never_acks", None)

    ended = await dispatcher.wait_for("call_ended", timeout_s=CALLER_ACK_TIMEOUT_S + SLACK_S)
    assert time.monotonic() - started < CALLER_ACK_TIMEOUT_S + SLACK_S
    assert ended.data == {"by": "edge", "reason": "caller_no_ack", "code": None}
    # the dispatcher never heard that this caller was on media: no agent was offered it
    assert dispatcher.kinds() == ["call_arrived", "call_ended"]
    await expect_success(caller, music)   # the caller and the media server got their BYE
    assert stack.active_calls() == 0


async def test_an_agent_answering_a_caller_that_never_acks_is_not_reported_answered(
        edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    """A flow without media rings the agent with the caller's own offer: the agent's answer goes to
    the caller, and the agent is reported answered only when the caller ACKs it."""
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = agent_at_once(edge, sipp, "agent_early_uas")
    caller = support_caller(sipp, edge, "caller_never_acks", None)

    ended = await dispatcher.wait_for("call_ended", timeout_s=CALLER_ACK_TIMEOUT_S + SLACK_S)
    assert ended.data == {"by": "edge", "reason": "caller_no_ack", "code": None}
    assert dispatcher.kinds() == ["call_arrived", "call_ended"]
    await expect_success(caller, agent)   # the agent got its BYE
    assert stack.active_calls() == 0


async def test_a_caller_that_never_answers_the_reinvite_to_the_agent_is_hung_up_soon(
        edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music, agent = queue_then_agent(edge, sipp, "agent_late_uas")
    caller = support_caller(sipp, edge, "caller_never_answers_reinvite", None)

    await dispatcher.wait_for("media_answered", timeout_s=SLACK_S)
    started = time.monotonic()
    ended = await dispatcher.wait_for("call_ended", timeout_s=CALLER_REINVITE_TIMEOUT_S + SLACK_S + 2)
    assert time.monotonic() - started < CALLER_REINVITE_TIMEOUT_S + SLACK_S + 2
    assert ended.data == {"by": "edge", "reason": "caller_reinvite_timeout", "code": None}
    # the agent answered but was never connected: no agent_answered, so no talk is counted on it
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "call_ended"]
    await expect_success(caller, music)
    await agent.finish()   # its ACK carries no caller answer (there is none): only its BYE counts here
    assert any(m.is_request("BYE") for m in agent.messages() if not m.sent)
    assert stack.active_calls() == 0
