"""The SIP edge under bad input and lifecycle edge cases: garbage datagrams, missing headers,
Max-Forwards 0, oversized messages, out-of-dialog requests, drain mode, bind failure, stop().

Raw datagrams are sent from the test over a loopback UDP socket; real calls use SIPp.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
from sip_harness import (
    LOOPBACK,
    EdgeUnderTest,
    ScriptedDispatcher,
    SippLauncher,
    agent_at_once,
    expect_success,
    free_udp_port,
)

from callcenter_sip_edge.sip_stack import SipStack


def _request(method: str, edge_port: int, client: socket.socket, *, call_id: str | None = "raw-1",
             to_tag: str | None = None, max_forwards: int = 70, body: str = "", extra: str = "") -> bytes:
    port = client.getsockname()[1]
    lines = [
        f"{method} sip:support@{LOOPBACK}:{edge_port} SIP/2.0",
        f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-{os.urandom(4).hex()};rport",
        f"From: <sip:tester@{LOOPBACK}:{port}>;tag=t1",
        f"To: <sip:support@{LOOPBACK}:{edge_port}>" + (f";tag={to_tag}" if to_tag else ""),
    ]
    if call_id is not None:
        lines.append(f"Call-ID: {call_id}")
    lines += [f"CSeq: 1 {method}", f"Contact: <sip:tester@{LOOPBACK}:{port}>", f"Max-Forwards: {max_forwards}"]
    if extra:
        lines.append(extra)
    if body:
        lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}", "", body]
    else:
        lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


SDP = "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


async def _exchange(client: socket.socket, edge_port: int, data: bytes) -> str:
    client.sendto(data, (LOOPBACK, edge_port))
    reply = await asyncio.to_thread(client.recv, 65535)
    return reply.decode()


async def _final_response(client: socket.socket) -> str:
    while True:
        reply = (await asyncio.to_thread(client.recv, 65535)).decode()
        if not reply.startswith("SIP/2.0 1"):
            return reply


async def test_options_gets_200_with_allow(edge: EdgeUnderTest, client: socket.socket) -> None:
    reply = await _exchange(client, edge.port, _request("OPTIONS", edge.port, client))
    assert reply.startswith("SIP/2.0 200 OK")
    assert "INVITE" in reply and "Allow:" in reply


async def test_out_of_dialog_requests(edge: EdgeUnderTest, client: socket.socket) -> None:
    bye = await _exchange(client, edge.port, _request("BYE", edge.port, client, call_id="x1", to_tag="nope"))
    assert bye.startswith("SIP/2.0 481")
    message = await _exchange(client, edge.port, _request("MESSAGE", edge.port, client, call_id="x2"))
    assert message.startswith("SIP/2.0 405")
    unknown = await _exchange(client, edge.port, _request("FROBNICATE", edge.port, client, call_id="x3"))
    assert unknown.startswith("SIP/2.0 501")
    hops = _request("INVITE", edge.port, client, call_id="x4", max_forwards=0, body=SDP)
    client.sendto(hops, (LOOPBACK, edge.port))
    assert (await _final_response(client)).startswith("SIP/2.0 483")
    assert edge.dispatcher.facts == []


async def test_garbage_never_stops_the_edge(edge: EdgeUnderTest, client: socket.socket,
                                            sipp: SippLauncher) -> None:
    dispatcher = edge.dispatcher
    target = (LOOPBACK, edge.port)
    client.sendto(os.urandom(300), target)
    client.sendto(b"\xff\xfe garbage that is not SIP at all, not even UTF-8 \x80\x81", target)
    client.sendto(b"HELLO WORLD this is not a request line\r\n\r\n" + b"x" * 40, target)
    client.sendto(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n" + b"y" * 40, target)
    client.sendto(b"X" * 9000, target)  # oversized: dropped
    client.sendto(_request("INVITE", edge.port, client, call_id="big", body=SDP + "a=x:" + "z" * 9000), target)
    # a request without Call-ID can still be answered (400) from its own Via/From/To/CSeq
    no_call_id = await _exchange(client, edge.port, _request("INVITE", edge.port, client, call_id=None, body=SDP))
    assert no_call_id.startswith("SIP/2.0 400")
    assert "Call-ID" in no_call_id.splitlines()[0]
    bad_cseq = _request("OPTIONS", edge.port, client, call_id="c1").replace(b"CSeq: 1 OPTIONS", b"CSeq: one")
    assert (await _exchange(client, edge.port, bad_cseq)).startswith("SIP/2.0 400")
    assert dispatcher.facts == []

    agent = agent_at_once(edge, sipp, "agent_early_uas")
    caller = sipp.start("caller_answered_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=300)
    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]


async def test_drain_answers_503_with_retry_after(edge: EdgeUnderTest, client: socket.socket) -> None:
    edge.stack.set_accepting(False)
    client.sendto(_request("INVITE", edge.port, client, call_id="drain", body=SDP), (LOOPBACK, edge.port))
    reply = await _final_response(client)
    assert reply.startswith("SIP/2.0 503")
    assert "retry-after:" in reply.lower()
    edge.stack.set_accepting(True)
    client.sendto(_request("INVITE", edge.port, client, call_id="drain2", body=SDP), (LOOPBACK, edge.port))
    arrived = await edge.dispatcher.wait_for("call_arrived", timeout_s=5)
    edge.stack.reject(arrived.call_id, 486, "busy")
    assert (await _final_response(client)).startswith("SIP/2.0 486")


async def test_commands_for_unknown_calls_or_wrong_state_are_ignored(edge: EdgeUnderTest,
                                                                     client: socket.socket) -> None:
    stack = edge.stack
    stack.media("no-such-call", "sip:x@127.0.0.1:9", "welcome")
    stack.hangup("no-such-call", "x")
    stack.media("no-such-call", "sip:x@127.0.0.1:9", "not-a-purpose")
    client.sendto(_request("INVITE", edge.port, client, call_id="wrong-state", body=SDP), (LOOPBACK, edge.port))
    arrived = await edge.dispatcher.wait_for("call_arrived", timeout_s=5)
    stack.cancel_ring(arrived.call_id, "never-rung")
    stack.ring(arrived.call_id, "o1", "a1", "sip:agent@127.0.0.1:9;transport=tcp", 5.0)
    failed = await edge.dispatcher.wait_for("agent_failed", timeout_s=5)
    assert failed.data["reason"] == "unreachable"
    assert stack.active_calls() == 1
    stack.hangup(arrived.call_id, "test_done")
    ended = await edge.dispatcher.wait_for("call_ended", timeout_s=5)
    assert ended.data == {"by": "edge", "reason": "test_done", "code": 480}
    assert (await _final_response(client)).startswith("SIP/2.0 480")
    assert stack.active_calls() == 0


async def test_stop_hangs_up_active_calls_quickly(sipp: SippLauncher) -> None:
    dispatcher = ScriptedDispatcher()
    port = free_udp_port()
    stack = SipStack(host=LOOPBACK, port=port, on_fact=dispatcher.on_fact, loop=asyncio.get_running_loop())
    stack.start()
    music = sipp.start("media_hold_uas", name="queue-music")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    caller = sipp.start("caller_answered_wait_bye", name="caller", remote_port=port, service="support")
    try:
        await dispatcher.wait_for("media_answered", timeout_s=10)
        assert stack.active_calls() == 1
    finally:
        started = time.monotonic()
        stack.stop()
        assert time.monotonic() - started < 3
    await expect_success(caller, music)
    ended = await dispatcher.wait_for("call_ended", timeout_s=2)
    assert ended.data["reason"] == "shutdown"


async def test_hangup_all_ends_every_call(edge: EdgeUnderTest, client: socket.socket) -> None:
    for n in range(3):
        client.sendto(_request("INVITE", edge.port, client, call_id=f"all-{n}", body=SDP), (LOOPBACK, edge.port))
    deadline = asyncio.get_running_loop().time() + 5
    while edge.dispatcher.kinds().count("call_arrived") < 3:
        assert asyncio.get_running_loop().time() < deadline, edge.dispatcher.summary()
        await edge.dispatcher.wait_for("call_arrived", timeout_s=1)
        await asyncio.sleep(0.05)
    assert edge.stack.active_calls() == 3
    edge.stack.hangup_all("edge_shutdown")
    for _ in range(3):
        assert (await _final_response(client)).startswith("SIP/2.0 480")
    # the SIP thread sends a call's 480 before it forgets the call: the last one may still be
    # counted for a moment after its 480 arrived here
    deadline = asyncio.get_running_loop().time() + 5
    while edge.stack.active_calls() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert edge.stack.active_calls() == 0
    # the facts reach the asyncio loop after the 480s have left (and the blocking reads above held
    # the loop): let them arrive
    deadline = asyncio.get_running_loop().time() + 5
    while edge.dispatcher.kinds().count("call_ended") < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert [f.data["reason"] for f in edge.dispatcher.facts if f.kind == "call_ended"] == ["edge_shutdown"] * 3


async def test_start_fails_when_port_is_taken() -> None:
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((LOOPBACK, port))
        stack = SipStack(host=LOOPBACK, port=port, on_fact=lambda fact: None, loop=asyncio.get_running_loop())
        with pytest.raises(OSError):
            stack.start()
    # the process can still run a stack afterwards
    other = SipStack(host=LOOPBACK, port=free_udp_port(), on_fact=lambda fact: None,
                     loop=asyncio.get_running_loop())
    other.start()
    other.stop()
