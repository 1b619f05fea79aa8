"""The callcenter caller scenarios (devtools' caller*.xml, the example's caller.xml) answer a re-INVITE
that reaches SIPp right behind the 200 it ACKs.

A UDP socket of this test plays the edge at its quickest: our 200 to the caller's INVITE and the
re-INVITE that moves it to an agent go out back to back, so SIPp reads the re-INVITE in the same
pass over its socket as the 200. The scenarios branched on a `<nop>` after the ACK, which SIPp runs
only after that pass: the re-INVITE met the `<nop>` and SIPp aborted the call as "unexpected" (seen
in the fault suite under load as `caller_reinvite_timeout`: the edge did its part, the caller
scenario did not). Each scenario must now answer the re-INVITE, ACK our 200, and end its call.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port
from callcenter_dev.sipp import Sipp

EXAMPLE_CALLER = Path(__file__).resolve().parents[2] / "examples" / "tech-support" / "caller.xml"
OUR_TAG = "edgetag1"


def _sdp(session: str) -> str:
    return (f"v=0\r\no=edge 1 1 IN IP4 127.0.0.1\r\ns={session}\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def _header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*?)\r?$", msg, re.MULTILINE | re.IGNORECASE)
    assert m, f"no {name} in:\n{msg}"
    return m.group(1)


class FakeEdge:
    """Answers one call the way the edge does at its quickest; records what SIPp sent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.port = free_port(socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.got: list[str] = []
        self.peer: tuple[str, int] | None = None

    def recv(self, deadline: float) -> str | None:
        while time.monotonic() < deadline:
            try:
                data, self.peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            msg = data.decode()
            self.got.append(msg)
            return msg
        return None

    def send(self, msg: str) -> None:
        assert self.peer is not None
        self.sock.sendto(msg.encode(), self.peer)

    def response(self, request: str, code: str, body: str = "", tag: bool = True) -> str:
        to = _header(request, "To") + (f";tag={OUR_TAG}" if tag and ";tag=" not in _header(request, "To") else "")
        head = (f"SIP/2.0 {code}\r\nVia: {_header(request, 'Via')}\r\nFrom: {_header(request, 'From')}\r\n"
                f"To: {to}\r\nCall-ID: {_header(request, 'Call-ID')}\r\nCSeq: {_header(request, 'CSeq')}\r\n"
                f"Contact: <sip:127.0.0.1:{self.port}>\r\n")
        if body:
            head += "Content-Type: application/sdp\r\n"
        return head + f"Content-Length: {len(body)}\r\n\r\n{body}"

    def request(self, method: str, peer_msg: str, from_: str, to: str, body: str = "") -> str:
        """A request in the caller's dialog, to the Contact of `peer_msg` (its INVITE or its 200)."""
        target = re.search(r"<(sip:[^>]+)>", _header(peer_msg, "Contact"))
        assert target
        head = (f"{method} {target.group(1)} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{method.lower()}1\r\n"
                f"From: {from_}\r\nTo: {to}\r\nCall-ID: {_header(peer_msg, 'Call-ID')}\r\n"
                f"CSeq: 100 {method}\r\nContact: <sip:127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n")
        if body:
            head += "Content-Type: application/sdp\r\n"
        return head + f"Content-Length: {len(body)}\r\n\r\n{body}"

    def reinvite(self, invite: str, body: str) -> str:
        return self.request("INVITE", invite, f"{_header(invite, 'To')};tag={OUR_TAG}", _header(invite, "From"), body)

    def ack(self, answer: str) -> str:
        """The ACK of the caller's 200 to our re-INVITE."""
        return self.request("ACK", answer, _header(answer, "From"), _header(answer, "To"))

@pytest.mark.parametrize("path", [scenario("caller.xml"), scenario("caller_logged.xml"), EXAMPLE_CALLER],
                         ids=["caller", "caller_logged", "example_caller"])
def test_a_reinvite_right_behind_our_200_is_answered(path: Path) -> None:
    edge = FakeEdge()
    sipp = Sipp(path, remote=f"127.0.0.1:{edge.port}", service="flow", calls=1, timeout_s=20,
                extra=["-d", "100"]).start()
    try:
        deadline = time.monotonic() + 15
        invite = edge.recv(deadline)
        assert invite is not None and invite.startswith("INVITE "), invite
        # the 200 with the queue's media, and the re-INVITE to the agent before SIPp's ACK
        edge.send(edge.response(invite, "200 OK", _sdp("callcenter-media")))
        edge.send(edge.reinvite(invite, _sdp("callcenter-agent")))
        seen: list[str] = []
        bye_answered = False
        while time.monotonic() < deadline and not bye_answered:
            msg = edge.recv(deadline)
            if msg is None:
                break
            first = msg.split("\r\n", 1)[0]
            seen.append(first)
            if first.startswith("SIP/2.0 200") and "INVITE" in _header(msg, "CSeq"):
                edge.send(edge.ack(msg))
            elif first.startswith("BYE "):
                edge.send(edge.response(msg, "200 OK", tag=False))
                bye_answered = True
        assert seen and seen[0].startswith("ACK "), seen   # our 200 came first: its ACK first
        assert any(s.startswith("SIP/2.0 200") for s in seen), f"the re-INVITE was not answered: {seen}"
        assert bye_answered, f"the caller did not end its call with a BYE: {seen}"
        assert sipp.wait(10) == 0, (sipp.logdir / "errors.log").read_text(errors="replace")
    finally:
        sipp.stop()
        edge.sock.close()
