"""The 100 Trying of an INVITE goes out only when nothing else answers it in the reactor's turn
(`callcenter_sip_edge/sippy/trying.py`, issue 15: one datagram less per call).

A new INVITE is answered with 180 Ringing in the turn it arrives in, so the caller gets no 100; a
caller's re-INVITE that the edge relays to the agent is answered only when the agent answers, and
with an agent that takes 300 ms that is a later turn, so it still gets its 100 before the 200
(RFC 3261 17.2.1). Real SIPp peers and a raw
UDP socket on loopback.

Reads: the responses the peers receive. Writes: nothing outside the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time

from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher, agent_at_once, expect_success, support_caller

# how long the raw caller listens for responses (the edge answers at once; generous for a loaded machine)
LISTEN_S = 2.0


def _invite(edge_port: int, client_port: int, call_id: str) -> bytes:
    sdp = "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    lines = [
        f"INVITE sip:support@{LOOPBACK}:{edge_port} SIP/2.0",
        f"Via: SIP/2.0/UDP {LOOPBACK}:{client_port};branch=z9hG4bK-{os.urandom(4).hex()};rport",
        f"From: <sip:caller@{LOOPBACK}:{client_port}>;tag=t{call_id}",
        f"To: <sip:support@{LOOPBACK}:{edge_port}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:caller@{LOOPBACK}:{client_port}>",
        "Max-Forwards: 70",
        "Content-Type: application/sdp",
        f"Content-Length: {len(sdp)}",
        "",
        sdp,
    ]
    return "\r\n".join(lines).encode()


async def _responses(client: socket.socket, until: float) -> list[str]:
    client.settimeout(0.2)
    got: list[str] = []
    while time.monotonic() < until:
        try:
            got.append((await asyncio.to_thread(client.recv, 65535)).decode(errors="replace"))
        except TimeoutError:
            continue
    return got


async def test_a_new_invite_gets_180_and_no_100(edge: EdgeUnderTest, client: socket.socket) -> None:
    # nothing answers the call (no command): the edge's only responses are its provisional ones
    port = client.getsockname()[1]
    client.sendto(_invite(edge.port, port, "trying-1"), (LOOPBACK, edge.port))
    codes = [reply.split(" ", 2)[1] for reply in await _responses(client, time.monotonic() + LISTEN_S)]
    await edge.dispatcher.wait_for("call_arrived")
    assert codes == ["180"], codes


async def test_a_relayed_reinvite_still_gets_its_100(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    # the caller's re-INVITE (resume, CSeq 3) waits for the agent's answer, which comes 300 ms later
    # (a later reactor turn): the 100 goes out first. (An answer read in the same batch of
    # datagrams would make the 100 needless, and it would be dropped.)
    agent = agent_at_once(edge, sipp, "agent_early_reinvited_slow_uas")
    caller = support_caller(sipp, edge, "caller_update_reinvite")
    await expect_success(caller, agent)
    received = [m for m in caller.messages() if not m.sent and m.start_line.startswith("SIP/2.0 ")]
    reinvite = [m.start_line.split(" ", 2)[1] for m in received
                if re.search(r"^CSeq:\s*3\s+INVITE", m.text, re.MULTILINE | re.IGNORECASE)]
    first = [m.start_line.split(" ", 2)[1] for m in received
             if re.search(r"^CSeq:\s*1\s+INVITE", m.text, re.MULTILINE | re.IGNORECASE)]
    assert reinvite[:1] == ["100"] and "200" in reinvite, reinvite
    assert "100" not in first and "200" in first, first   # the first INVITE: 180 instead
