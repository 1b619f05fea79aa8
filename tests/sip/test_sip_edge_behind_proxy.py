"""A caller behind a proxy: the INVITE reaches the edge with two Vias and a Record-Route.

The test plays the proxy with a raw UDP socket (the caller's own socket must never be contacted
directly): responses must carry both Vias in order and the Record-Route; in-dialog requests from
the edge to the caller (here the BYE of a hang-up) must go to the proxy, with a Route header, and
the caller's Contact as Request-URI (loose routing, RFC 3261 12.2.1.1). So must the re-INVITE of the
caller to another media leg, and the ACK of its 200 (which, like most, has no Record-Route).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Iterator

import pytest
from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher, SippProcess, expect_success

SDP = "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    proxy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ua = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (proxy, ua):
        s.bind((LOOPBACK, 0))
        s.settimeout(5.0)
    yield proxy, ua
    proxy.close()
    ua.close()


def headers(msg: str, name: str) -> list[str]:
    return [ln.split(":", 1)[1].strip() for ln in msg.split("\r\n\r\n")[0].split("\r\n")[1:]
            if ln.split(":", 1)[0].strip().lower() == name.lower()]


def same_uri(a: str, b: str) -> bool:
    """RFC 3261 19.1.4: URI parameters compare in any order (sippy renders `lr` last)."""
    def norm(v: str) -> tuple[str, frozenset[str]]:
        base, *params = v.strip("<>").split(";")
        return base.lower(), frozenset(p.lower() for p in params)
    return norm(a) == norm(b)


async def recv_until(sock: socket.socket, predicate: str) -> str:
    while True:
        msg = (await asyncio.to_thread(sock.recv, 65535)).decode()
        if re.match(predicate, msg):
            return msg


@pytest.mark.parametrize("reinvite", [False, True], ids=["bye", "reinvite_then_bye"])
async def test_responses_keep_both_vias_and_the_record_route_in_dialog_requests_follow_the_route_set(
        edge: EdgeUnderTest, sipp: SippLauncher, sockets: tuple[socket.socket, socket.socket],
        reinvite: bool) -> None:
    proxy, ua = sockets
    pport, uport = proxy.getsockname()[1], ua.getsockname()[1]
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))

    ua_via = f"SIP/2.0/UDP {LOOPBACK}:{uport};branch=z9hG4bK-ua{os.urandom(3).hex()}"
    proxy_via = f"SIP/2.0/UDP {LOOPBACK}:{pport};branch=z9hG4bK-px{os.urandom(3).hex()}"
    record_route = f"<sip:{LOOPBACK}:{pport};lr;ftag=ua1>"
    invite = "\r\n".join([
        f"INVITE sip:support@{LOOPBACK}:{edge.port} SIP/2.0",
        f"Via: {proxy_via}",
        f"Via: {ua_via}",
        f"Record-Route: {record_route}",
        f"From: <sip:alice@{LOOPBACK}>;tag=ua1",
        f"To: <sip:support@{LOOPBACK}:{edge.port}>",
        "Call-ID: behind-proxy-1",
        "CSeq: 1 INVITE",
        f"Contact: <sip:alice@{LOOPBACK}:{uport}>",
        "Max-Forwards: 69",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
        "",
        SDP,
    ]).encode()
    proxy.sendto(invite, (LOOPBACK, edge.port))

    ok = await recv_until(proxy, r"SIP/2\.0 200 ")
    assert headers(ok, "via") == [proxy_via, ua_via], ok
    [rr] = headers(ok, "record-route")
    assert same_uri(rr, record_route), ok
    edge_contact = re.search(r"<([^>]+)>", headers(ok, "contact")[0])
    assert edge_contact is not None
    to_hf = headers(ok, "to")[0]
    ack = "\r\n".join([
        f"ACK {edge_contact.group(1)} SIP/2.0",
        f"Via: SIP/2.0/UDP {LOOPBACK}:{pport};branch=z9hG4bK-pxack",
        f"Via: SIP/2.0/UDP {LOOPBACK}:{uport};branch=z9hG4bK-uaack",
        f"From: <sip:alice@{LOOPBACK}>;tag=ua1",
        f"To: {to_hf}",
        "Call-ID: behind-proxy-1",
        "CSeq: 1 ACK",
        "Max-Forwards: 69",
        "Content-Length: 0",
        "", "",
    ]).encode()
    proxy.sendto(ack, (LOOPBACK, edge.port))
    arrived = await dispatcher.wait_for("media_answered", timeout_s=5)
    media = [music]
    if reinvite:
        media.append(await reinvite_through_the_proxy(edge, sipp, proxy, arrived.call_id, uport, record_route))

    stack.hangup(arrived.call_id, "test_done")
    bye = await recv_until(proxy, r"BYE ")
    assert bye.startswith(f"BYE sip:alice@{LOOPBACK}:{uport} SIP/2.0"), bye  # the caller's Contact
    [route] = headers(bye, "route")
    assert same_uri(route, record_route), bye
    assert len(headers(bye, "via")) == 1
    bye_reply = "\r\n".join([
        "SIP/2.0 200 OK", *(f"Via: {v}" for v in headers(bye, "via")), f"From: {headers(bye, 'from')[0]}",
        f"To: {headers(bye, 'to')[0]}", "Call-ID: behind-proxy-1", f"CSeq: {headers(bye, 'cseq')[0]}",
        "Content-Length: 0", "", ""]).encode()
    proxy.sendto(bye_reply, (LOOPBACK, edge.port))
    ended = await dispatcher.wait_for("call_ended", timeout_s=5)
    assert ended.data["reason"] == "test_done"
    await expect_success(*media)
    # nothing ever went to the caller's own socket: everything went through the proxy
    ua.settimeout(0.2)
    with pytest.raises(TimeoutError):
        ua.recv(65535)
    assert stack.active_calls() == 0


async def reinvite_through_the_proxy(edge: EdgeUnderTest, sipp: SippLauncher, proxy: socket.socket, call_id: str,
                                     uport: int, record_route: str) -> SippProcess:
    """Move the caller to a late-offer media leg: the edge re-INVITEs the caller through the proxy;
    the 200 (no Record-Route) must be ACKed through the proxy too."""
    music2 = sipp.start("media_queue_late_uas", name="queue-music-2")
    edge.stack.media(call_id, music2.uri("queue", ";cc_pos=0"), "queue")
    reinv = await recv_until(proxy, r"INVITE ")
    assert reinv.startswith(f"INVITE sip:alice@{LOOPBACK}:{uport} SIP/2.0"), reinv
    assert [same_uri(r, record_route) for r in headers(reinv, "route")] == [True], reinv
    answer = SDP.replace("o=t 1 1", "o=t 1 2")
    reinv_ok = "\r\n".join([
        "SIP/2.0 200 OK", *(f"Via: {v}" for v in headers(reinv, "via")), f"From: {headers(reinv, 'from')[0]}",
        f"To: {headers(reinv, 'to')[0]}", "Call-ID: behind-proxy-1", f"CSeq: {headers(reinv, 'cseq')[0]}",
        f"Contact: <sip:alice@{LOOPBACK}:{uport}>", "Content-Type: application/sdp",
        f"Content-Length: {len(answer)}", "", answer]).encode()
    proxy.sendto(reinv_ok, (LOOPBACK, edge.port))
    ack = await recv_until(proxy, r"ACK ")
    assert ack.startswith(f"ACK sip:alice@{LOOPBACK}:{uport} SIP/2.0"), ack
    assert [same_uri(r, record_route) for r in headers(ack, "route")] == [True], ack
    assert headers(ack, "cseq")[0].split()[0] == headers(reinv, "cseq")[0].split()[0]
    await edge.dispatcher.wait_for("media_answered", timeout_s=5, uri=music2.uri("queue", ";cc_pos=0"))
    return music2
