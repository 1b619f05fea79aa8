"""The flow-id message ("whisper"): command.ring with whisper_uri, through the SIP edge with SIPp peers.

The answered agent first hears the message (its offer goes to the message's media server, whose
answer is in the agent's ACK) while the caller stays on the queue media; when the media server
hangs up, the agent is re-INVITEd without SDP and its new offer goes to the caller (RFC 3725).
The scripted dispatcher plays the Lua steps; each SIPp scenario checks the SDP it is given.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta

from sip_harness import EdgeUnderTest, SipMessage, SippLauncher, SippProcess, expect_success, support_caller

from callcenter_sip_edge.facts import Fact

# how long after its send a SIPp may stamp a message it sent (it writes the trace afterwards)
SENT_TRACE_LAG = timedelta(milliseconds=5)


def _first(messages: list[SipMessage], predicate, what: str) -> SipMessage:  # type: ignore[no-untyped-def]
    for message in messages:
        if predicate(message):
            return message
    raise AssertionError(f"no {what} in trace: {[m.start_line for m in messages]}")


def _queue_then_ring(edge: EdgeUnderTest, sipp: SippLauncher, agent_scenario: str,
                     whisper: SippProcess | str | None) -> tuple[SippProcess, SippProcess]:
    """Queue music, then (once it answers) ring the agent with the flow-id message `whisper` (a
    SIPp media server, or a URI as is); returns the music and agent SIPp processes."""
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    agent = sipp.start(agent_scenario, name="agent")
    whisper_uri = whisper.uri("flowid") if isinstance(whisper, SippProcess) else whisper
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0,
                                                         whisper_uri=whisper_uri))
    return music, agent


async def _wait_until(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_whisper_then_caller_connected(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    agent = sipp.start("agent_whisper_uas", name="agent")
    whisper = sipp.start("whisper_media_uas", name="whisper")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0,
                                                         whisper_uri=whisper.uri("flowid", ";flow=support")))
    caller = support_caller(sipp, edge, "caller_whisper_reinvited_bye")

    await expect_success(caller, music, agent, whisper)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_answered", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a1"}
    assert dispatcher.facts[3].data == {"by": "caller", "reason": "bye", "code": None}

    # what each peer saw, in time order across the peers
    a, w, c, q = agent.messages(), whisper.messages(), caller.messages(), music.messages()
    agent_200 = _first(a, lambda m: m.sent and m.is_response(200, "INVITE"), "agent 200")
    agent_ack_1 = _first(a, lambda m: not m.sent and m.is_request("ACK"), "agent ACK")
    whisper_invite = _first(w, lambda m: not m.sent and m.is_request("INVITE"), "whisper INVITE")
    whisper_bye = _first(w, lambda m: m.sent and m.is_request("BYE"), "whisper BYE")
    agent_reinvite = _first(a, lambda m: not m.sent and m.is_request("INVITE") and m.at > agent_ack_1.at,
                            "agent re-INVITE")
    caller_reinvite = _first(c, lambda m: not m.sent and m.is_request("INVITE"), "caller re-INVITE")
    agent_ack_2 = _first(a, lambda m: not m.sent and m.is_request("ACK") and m.at > agent_reinvite.at,
                         "agent second ACK")
    queue_bye = _first(q, lambda m: not m.sent and m.is_request("BYE"), "queue BYE")

    assert "s=agent-offer-1" in whisper_invite.body, "the message server got the agent's offer"
    assert "s=whisper-answer" in agent_ack_1.body, "the agent's ACK carried the message's answer"
    assert "m=" not in agent_reinvite.body, "the agent is re-INVITEd without SDP"
    assert "s=agent-offer-2" in caller_reinvite.body
    assert "s=caller-answer" in agent_ack_2.body
    # each step needs the one before it (the edge sends the agent's ACK and the queue's BYE at the
    # same moment, so only "after the caller's re-INVITE" holds for the queue's BYE)
    order = [agent_200, whisper_invite, agent_ack_1, whisper_bye, agent_reinvite, caller_reinvite, agent_ack_2]
    for earlier, later in itertools.pairwise(order):
        # SIPp stamps a message it sent when it writes its trace, after the send: the next peer may
        # stamp the edge's reaction (sent within a millisecond) before that
        slack = SENT_TRACE_LAG if earlier.sent else timedelta(0)
        assert later.at >= earlier.at - slack, [(m.at, m.start_line) for m in order]
    assert queue_bye.at > caller_reinvite.at
    # the caller heard the queue media until it was connected to the agent (the whisper's BYE is a
    # message it sent: stamped when its trace was written, up to SENT_TRACE_LAG after the send)
    assert not any(m.is_request("INVITE") for m in c if not m.sent and m.at < whisper_bye.at - SENT_TRACE_LAG)
    answered_at = datetime.fromtimestamp(dispatcher.facts[2].ts_ms / 1000)
    assert answered_at >= caller_reinvite.at.replace(microsecond=caller_reinvite.at.microsecond // 1000 * 1000), (
        "agent_answered is reported once the caller is connected, after the message")
    assert stack.active_calls() == 0


async def test_agent_hangs_up_during_whisper(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    whisper = sipp.start("whisper_media_wait_bye_uas", name="whisper")
    music, agent = _queue_then_ring(edge, sipp, "agent_whisper_hangup_uas", whisper)
    second = sipp.start("agent_late_uas", name="second-agent")
    queue_up_when_failed: list[bool] = []

    def requeue_at_head(fact: Fact) -> None:
        queue_up_when_failed.append(music.running())
        stack.ring(fact.call_id, "o2", "a2", second.uri("agent"), 10.0)

    dispatcher.on("agent_failed", requeue_at_head)
    caller = support_caller(sipp, edge, "caller_reinvited_1_bye")

    await expect_success(caller, music, agent, whisper, second)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_failed", "agent_answered", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a1", "reason": "hung_up", "code": None}
    assert dispatcher.facts[3].data == {"offer_id": "o2", "agent_id": "a2"}
    assert queue_up_when_failed == [True], "the caller stays on the queue media"
    # the message leg got BYE when the agent left; the caller was re-INVITEd once (to the second agent)
    assert any(m.is_request("BYE") and not m.sent for m in whisper.messages())
    assert stack.active_calls() == 0


async def test_whisper_media_rejects_agent_connected_directly(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    whisper = sipp.start("agent_busy_uas", name="whisper-busy")
    music, agent = _queue_then_ring(edge, sipp, "agent_late_uas", whisper)
    caller = support_caller(sipp, edge, "caller_reinvited_1_bye")

    # agent_late_uas checks that its ACK carries the caller's answer (to its first offer)
    await expect_success(caller, music, agent, whisper)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_answered", "call_ended"]
    invite = _first(whisper.messages(), lambda m: not m.sent and m.is_request("INVITE"), "whisper INVITE")
    assert "o=agent 7 7" in invite.body
    assert stack.active_calls() == 0


async def test_bad_whisper_uri_agent_connected_directly(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    dispatcher = edge.dispatcher
    music, agent = _queue_then_ring(edge, sipp, "agent_late_uas", "not a sip uri")
    caller = support_caller(sipp, edge, "caller_reinvited_1_bye")

    await expect_success(caller, music, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_answered", "call_ended"]


async def test_caller_hangs_up_during_whisper(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    whisper = sipp.start("whisper_media_wait_bye_uas", name="whisper")
    music, agent = _queue_then_ring(edge, sipp, "agent_whisper_wait_bye_uas", whisper)
    # the agent answers 200 ms after its INVITE; the caller hangs up 1.5 s after being answered
    caller = support_caller(sipp, edge, "caller_answered_bye", pause_ms=1500)

    await expect_success(caller, music, agent, whisper)  # agent, message and queue media got BYE
    ended = await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "call_ended"]
    assert ended.data == {"by": "caller", "reason": "bye", "code": None}
    ack = _first(agent.messages(), lambda m: not m.sent and m.is_request("ACK"), "agent ACK")
    caller_bye = _first(caller.messages(), lambda m: m.sent and m.is_request("BYE"), "caller BYE")
    assert ack.at < caller_bye.at, "the caller hung up while the agent heard the message"
    assert stack.active_calls() == 0


async def test_cancel_ring_during_whisper(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    whisper = sipp.start("whisper_media_wait_bye_uas", name="whisper")
    music, agent = _queue_then_ring(edge, sipp, "agent_whisper_wait_bye_uas", whisper)
    dispatcher.on("agent_failed", lambda f: stack.hangup(f.call_id, "no_agent"))
    caller = support_caller(sipp, edge, "caller_answered_wait_bye")
    call = await dispatcher.wait_for("media_answered")
    # the message is playing once its media server got the ACK
    await _wait_until(lambda: any(m.is_request("ACK") for m in whisper.messages()))
    stack.cancel_ring(call.call_id, "o1")

    await expect_success(caller, music, agent, whisper)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_failed", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a1", "reason": "cancelled", "code": None}
    assert stack.active_calls() == 0


async def test_whisper_skipped_when_caller_not_answered(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    """An agent rung before the caller is answered gets the caller's offer, as without a message."""
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = sipp.start("agent_early_uas", name="agent")
    whisper = sipp.start("whisper_media_wait_bye_uas", name="whisper")
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0,
                                                  whisper_uri=whisper.uri("flowid")))
    caller = support_caller(sipp, edge, "caller_answered_bye")

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]
    assert whisper.messages() == []
    whisper.stop()


async def test_agent_reinvite_glare_after_whisper_is_retried(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    """The re-INVITE without SDP after the message gets 491: it is ACKed and sent again (2.1-4 s later)."""
    stack, dispatcher = edge.stack, edge.dispatcher
    whisper = sipp.start("whisper_media_uas", name="whisper")
    music, agent = _queue_then_ring(edge, sipp, "agent_whisper_glare_uas", whisper)
    caller = support_caller(sipp, edge, "caller_whisper_reinvited_bye")

    await expect_success(caller, music, agent, whisper)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_answered", "call_ended"]
    reinvites = [m for m in agent.messages() if not m.sent and m.is_request("INVITE")][1:]
    assert len(reinvites) == 2
    assert 2.0 <= (reinvites[1].at - reinvites[0].at).total_seconds() <= 4.5
    assert stack.active_calls() == 0
