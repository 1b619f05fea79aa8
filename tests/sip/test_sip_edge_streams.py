"""SIP over TCP and TLS through the edge (`sippy/streams.py`), with SIPp over `-t t1` and `-t l1`:
the first call path (welcome, queue, agent) and ring-all, every peer on the stream transport; a
request over 1,300 bytes to a UDP target goes by TCP (RFC 3261 18.1.1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher, edge_sent_problems, expect_success
from stream_harness import (
    Certificates,
    StreamSipp,
    running_edge,
    start_stream_sipp,
    stream_options,
)


@pytest_asyncio.fixture
async def stream_edge(certs: Certificates) -> AsyncIterator[EdgeUnderTest]:
    """A SipStack on a free loopback port with TCP and TLS; `stream_ports` says where."""
    async with running_edge(stream_options(certs)) as edge:
        yield edge


def _peer(sipp: SippLauncher, transport: str, certs: Certificates, scenario: str, name: str) -> StreamSipp:
    return start_stream_sipp(sipp, scenario, transport, certs, name=name)


def _caller(sipp: SippLauncher, edge: EdgeUnderTest, transport: str, certs: Certificates, scenario: str,
            **options: int) -> StreamSipp:
    return start_stream_sipp(sipp, scenario, transport, certs, name="caller",
                             remote_port=edge.stack.stream_ports[transport], service="support", pause_ms=500,
                             **options)


def _sent_over(peer: StreamSipp, transport: str) -> None:
    """Every message the peer got from the edge came over `transport` (its Via says so)."""
    got = [m for m in peer.messages() if not m.sent and not m.start_line.startswith("SIP/2.0")]
    assert got, f"{peer.name} got no request"
    for message in got:
        assert f"SIP/2.0/{transport.upper()} " in message.text, message.text


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_first_call_path_over_stream_transport(stream_edge: EdgeUnderTest, sipp: SippLauncher,
                                                     certs: Certificates, transport: str) -> None:
    stack, dispatcher = stream_edge.stack, stream_edge.dispatcher
    welcome = _peer(sipp, transport, certs, "media_welcome_uas", "welcome")
    queue = _peer(sipp, transport, certs, "media_queue_late_uas", "queue")
    agent = _peer(sipp, transport, certs, "agent_late_uas", "agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, welcome.uri("welcome"), "welcome"))
    dispatcher.on("media_ended", lambda f: stack.media(f.call_id, queue.uri("queue", ";cc_pos=0"), "queue"),
                  purpose="welcome")
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "offer-1", "agent-7", agent.uri("agent"), 10.0),
                  purpose="queue")
    caller = _caller(sipp, stream_edge, transport, certs, "caller_reinvited_2_bye")

    await expect_success(caller, welcome, queue, agent)
    ended = await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "media_ended", "media_answered",
                                  "agent_answered", "call_ended"]
    assert ended.data == {"by": "caller", "reason": "bye", "code": None}
    assert stack.active_calls() == 0
    for peer in (caller, welcome, queue, agent):
        _sent_over(peer, transport)
    contact = f";transport={transport}>"
    assert all(contact in m.text for m in agent.messages() if not m.sent and m.is_request("INVITE"))
    assert edge_sent_problems(caller, welcome, queue, agent) == []


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_ring_all_over_stream_transport(stream_edge: EdgeUnderTest, sipp: SippLauncher,
                                              certs: Certificates, transport: str) -> None:
    stack, dispatcher = stream_edge.stack, stream_edge.dispatcher
    music = _peer(sipp, transport, certs, "media_hold_uas", "queue-music")
    quick = _peer(sipp, transport, certs, "agent_late_uas", "quick-agent")
    slow = _peer(sipp, transport, certs, "agent_noanswer_uas", "slow-agent")
    targets = [{"agent_id": "a-slow", "uri": slow.uri("agent")}, {"agent_id": "a-quick", "uri": quick.uri("agent")}]
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring_all(f.call_id, "o1", targets, 10.0))
    caller = _caller(sipp, stream_edge, transport, certs, "caller_reinvited_1_bye")

    await expect_success(caller, music, quick, slow)  # the slow phone saw CANCEL, 487, ACK
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_failed", "agent_answered", "call_ended"]
    assert dispatcher.facts[3].data == {"offer_id": "o1", "agent_id": "a-quick"}
    assert stack.active_calls() == 0
    for peer in (caller, music, quick, slow):
        _sent_over(peer, transport)


async def test_large_invite_to_udp_target_goes_by_tcp(stream_edge: EdgeUnderTest, sipp: SippLauncher,
                                                      certs: Certificates) -> None:
    """The agent's URI says UDP, but the INVITE with the caller's large offer is over 1,300 bytes:
    it goes by TCP to the same address (RFC 3261 18.1.1), and the dialog goes on over TCP."""
    stack, dispatcher = stream_edge.stack, stream_edge.dispatcher
    agent = _peer(sipp, "tcp", certs, "agent_early_uas", "agent")
    udp_uri = f"sip:agent@{LOOPBACK}:{agent.port}"
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", udp_uri, 10.0))
    caller = _caller(sipp, stream_edge, "tcp", certs, "caller_answered_bye", sdp_padding=1400)

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    invite = next(m for m in agent.messages() if not m.sent and m.is_request("INVITE"))
    assert invite.size > 1300
    assert "SIP/2.0/TCP " in invite.text
    assert stack.active_calls() == 0




async def test_large_invite_stays_on_udp_when_the_switch_is_off(sipp: SippLauncher, certs: Certificates) -> None:
    """CC_SIP_LARGE_UDP_BY_TCP=false: a UDP-only peer gets its large INVITE over UDP."""
    async with running_edge(stream_options(None, large_udp_by_tcp=False)) as edge:
        stack, dispatcher = edge.stack, edge.dispatcher
        agent = sipp.start("agent_early_uas", name="agent")
        dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
        caller = _caller(sipp, edge, "tcp", certs, "caller_answered_bye", sdp_padding=1400)

        await expect_success(caller, agent)
        await dispatcher.wait_for("call_ended")
        invite = next(m for m in agent.messages() if not m.sent and m.is_request("INVITE"))
        assert invite.size > 1300
        assert "SIP/2.0/UDP " in invite.text


async def test_sips_uri_is_reached_over_tls(stream_edge: EdgeUnderTest, sipp: SippLauncher,
                                            certs: Certificates) -> None:
    """An agent URI with the sips: scheme and no transport= is reached over TLS (RFC 3261 26.2)."""
    stack, dispatcher = stream_edge.stack, stream_edge.dispatcher
    agent = _peer(sipp, "tls", certs, "agent_early_uas", "agent")
    sips_uri = f"sips:agent@{LOOPBACK}:{agent.sip_port}"
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", sips_uri, 10.0))
    caller = sipp.start("caller_answered_bye", name="caller", remote_port=stream_edge.port, service="support",
                        pause_ms=500)

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]
    _sent_over(agent, "tls")
