"""The media type of a call (audio or chat/MSRP), read from the caller's SDP by the SIP edge.

A chat call goes through welcome, queue and agent exactly like an audio call (MSRP is only SDP to
a signalling-only B2BUA); the SIPp scenarios check that every MSRP offer and answer reaches the
right party. An INVITE that is neither RTP nor MSRP (T.38 fax) gets 488 and creates no call.
"""

from __future__ import annotations

import asyncio

import pytest
from sip_harness import EdgeUnderTest, SippLauncher, expect_success

from callcenter_sip_edge.sdp import media_type_of


@pytest.mark.parametrize(("proto", "expected"), [
    ("RTP/AVP", "audio"), ("RTP/SAVP", "audio"), ("UDP/TLS/RTP/SAVPF", "audio"), ("RTP/AVPF", "audio"),
    ("TCP/MSRP", "chat"), ("TCP/TLS/MSRP", "chat"), ("tcp/msrp", "chat"),
    ("udptl", None), ("TCP", None),
])
def test_first_stream_protocol_decides(proto: str, expected: str | None) -> None:
    sdp = f"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=x 9 {proto} *\r\n"
    assert media_type_of(sdp) == expected


def test_only_the_first_stream_counts() -> None:
    sdp = "v=0\ns=-\nt=0 0\nm=image 5000 udptl t38\nm=audio 5002 RTP/AVP 0\n"
    assert media_type_of(sdp) is None
    sdp = "v=0\ns=-\nt=0 0\nm=message 7 TCP/MSRP *\nm=audio 5002 RTP/AVP 0\n"
    assert media_type_of(sdp) == "chat"


def test_no_sdp_is_audio_and_no_stream_is_not_acceptable() -> None:
    assert media_type_of(None) == "audio"
    assert media_type_of("v=0\r\ns=-\r\nt=0 0\r\n") is None
    assert media_type_of("hello") is None


async def test_chat_call_welcome_queue_agent(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    welcome = sipp.start("media_welcome_chat_uas", name="welcome")
    queue = sipp.start("media_queue_chat_late_uas", name="queue")
    agent = sipp.start("agent_chat_late_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, welcome.uri("welcome"), "welcome"))
    dispatcher.on("media_ended", lambda f: stack.media(f.call_id, queue.uri("queue", ";cc_pos=0"), "queue"),
                  purpose="welcome")
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0),
                  purpose="queue")
    caller = sipp.start("caller_chat_reinvited_2_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=500)

    # the scenarios check each MSRP path: welcome got the caller's offer, the caller got the queue's
    # and then the agent's offer in re-INVITEs, queue and agent got the caller's answers in their ACKs
    await expect_success(caller, welcome, queue, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "media_ended", "media_answered",
                                  "agent_answered", "call_ended"]
    assert dispatcher.facts[0].data["media_type"] == "chat"
    assert "a=accept-types:text/plain" in agent.traces()
    assert stack.active_calls() == 0


async def test_audio_call_is_reported_as_audio(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    dispatcher.on("call_arrived", lambda f: stack.reject(f.call_id, 404, "unknown_flow"))
    caller = sipp.start("caller_rejected_404", name="caller", remote_port=edge.port, service="support")

    await expect_success(caller)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.facts[0].data["media_type"] == "audio"


async def test_t38_only_invite_gets_488_and_no_call(edge: EdgeUnderTest, sipp: SippLauncher,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    caller = sipp.start("caller_t38_rejected_488", name="caller", remote_port=edge.port, service="support")

    await expect_success(caller)  # 488 with Warning: 304 ..., ACKed
    await asyncio.sleep(0.3)
    assert dispatcher.facts == []
    assert stack.active_calls() == 0
    assert capfd.readouterr().out.count("media_not_acceptable") == 1
