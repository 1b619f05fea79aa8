"""What the edge stops keeping to save memory (sippy/memory.py) changes nothing on the wire.

A hand-made caller (raw UDP socket) put on a SIPp media server that answers and holds
(`media_hold_uas`): our 200 is answered again, byte for byte, to the INVITE retransmitted after
the ACK; after the caller's BYE the ended dialog still absorbs a retransmitted BYE and answers a
late in-dialog request as sippy does (500), while its UA no longer holds its SDP bodies, its
response template, its last transaction or our Contact, and is no longer what sippy holds for its
Call-ID: a small record (`sippy/ended_dialog.py`) answers in its place, a new BYE with 200 and a
request with a CSeq already seen with sippy's 500, as the UA did.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time

from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher

GODEAD_S = 4.0   # the ended dialog's lifetime in this test (sippy's 32 s)
SDP = "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def _request(method: str, uri: str, client: socket.socket, *, call_id: str, cseq: int, to: str, branch: str,
             body: str = "") -> bytes:
    port = client.getsockname()[1]
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch={branch};rport",
             f"From: <sip:tester@{LOOPBACK}:{port}>;tag=mem1", f"To: {to}", f"Call-ID: {call_id}",
             f"CSeq: {cseq} {'INVITE' if method == 'ACK' else method}", f"Contact: <sip:tester@{LOOPBACK}:{port}>",
             "Max-Forwards: 70"]
    if body:
        lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}", "", body]
    else:
        lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


async def _reply(client: socket.socket, method: str, *, final: bool = True) -> str:
    """The next response to `method` (skipping provisional ones when `final`)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = (await asyncio.to_thread(client.recv, 65535)).decode()
        if not text.startswith("SIP/2.0 "):
            continue   # a request of the edge's: not expected here
        cseq = next(line for line in text.split("\r\n") if line.lower().startswith("cseq:"))
        if cseq.split()[-1] != method or (final and text.startswith("SIP/2.0 1")):
            continue
        return text
    raise AssertionError(f"no response to {method}")


def _header(message: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in message.split("\r\n")
                if line.lower().startswith(name.lower() + ":"))


def _caller_ua(call_id: str) -> object:
    from sippy.UA import UA

    found = [o for o in gc.get_objects() if isinstance(o, UA) and str(getattr(o, "cId", "")) == call_id]
    assert len(found) == 1, found
    return found[0]


def _connected_uas() -> list[object]:
    from sippy.UA import UA

    return [o for o in gc.get_objects() if isinstance(o, UA) and type(o.state).__name__ == "UaStateConnected"]


async def test_answers_and_ended_dialogs_behave_as_before(edge: EdgeUnderTest, client: socket.socket,
                                                          sipp: SippLauncher) -> None:
    client.settimeout(5.0)
    music = sipp.start("media_hold_uas", name="queue-music")
    edge.dispatcher.on("call_arrived", lambda f: edge.stack.media(f.call_id, music.uri("moh"), "queue"))
    call_id, edge_uri = f"mem-{os.urandom(4).hex()}", f"sip:support@{LOOPBACK}:{edge.port}"
    to = f"<{edge_uri}>"
    invite = _request("INVITE", edge_uri, client, call_id=call_id, cseq=1, to=to, branch="z9hG4bK-mem-inv", body=SDP)
    client.sendto(invite, (LOOPBACK, edge.port))
    ok = await _reply(client, "INVITE")
    assert ok.startswith("SIP/2.0 200"), ok
    to_tagged, contact = _header(ok, "To"), _header(ok, "Contact").strip("<>")
    client.sendto(_request("ACK", contact, client, call_id=call_id, cseq=1, to=to_tagged, branch="z9hG4bK-mem-ack"),
                  (LOOPBACK, edge.port))
    await asyncio.sleep(0.5)
    caller = _caller_ua(call_id)
    assert caller.uasResp is None   # type: ignore[attr-defined]   # dropped with the ACK
    assert caller.lSDP is not None and caller.rSDP is not None   # type: ignore[attr-defined]
    # both confirmed legs (the caller's, the media server's) keep no set-up transaction and a dict
    # that fits the small table (sippy/memory.py: set_up_over, without_class_defaults)
    connected = _connected_uas()
    assert caller in connected and len(connected) == 2, connected
    for ua in connected:
        assert ua.tr is None and len(vars(ua)) <= 42, sorted(vars(ua))   # type: ignore[attr-defined]
    caller.godead_timeout = GODEAD_S   # type: ignore[attr-defined]   # read when the dialog ends: seen to end below

    # the INVITE retransmitted after the ACK: the same 200 again, from the response cache
    client.sendto(invite, (LOOPBACK, edge.port))
    again = await _reply(client, "INVITE")
    assert again == ok

    bye = _request("BYE", contact, client, call_id=call_id, cseq=2, to=to_tagged, branch="z9hG4bK-mem-bye")
    client.sendto(bye, (LOOPBACK, edge.port))
    bye_ok = await _reply(client, "BYE")
    assert bye_ok.startswith("SIP/2.0 200"), bye_ok
    await edge.dispatcher.wait_for("call_ended")
    await asyncio.sleep(0.5)   # a reactor turn after the state change: the ended dialog is trimmed
    assert type(caller.state).__name__ == "UaStateDisconnected"   # type: ignore[attr-defined]
    for name in ("lSDP", "rSDP", "uasResp", "tr", "lContact"):
        assert getattr(caller, name) is None, name

    # still the dialog it was: a retransmitted BYE gets the same 200, a late request sippy's 500
    client.sendto(bye, (LOOPBACK, edge.port))
    assert await _reply(client, "BYE") == bye_ok
    info = _request("INFO", contact, client, call_id=call_id, cseq=3, to=to_tagged, branch="z9hG4bK-mem-info")
    client.sendto(info, (LOOPBACK, edge.port))
    late = await _reply(client, "INFO")
    assert late.startswith("SIP/2.0 500"), late

    # the ended dialog's record, not its UA, is what the transaction manager holds for the Call-ID
    consumers = caller.global_config["_sip_tm"].req_consumers[call_id]   # type: ignore[attr-defined]
    assert [c.cobj for c in consumers] == [caller.cc_ended_record]   # type: ignore[attr-defined]
    record = consumers[0].cobj
    assert record is not caller and record.state is caller.state   # type: ignore[attr-defined]
    assert set(vars(record)) <= {"global_config", "branch", "rCSeq", "local_ua", "remote_ua", "compact_sip",
                                 "uas_lossemul", "godead_timeout", "cId", "lUri", "rUri", "cc_peer_hosts",
                                 "equeue", "dead_cbs", "state"}, vars(record)
    assert record.rCSeq == 3 and record.lUri.getTag() == caller.lUri.getTag()   # type: ignore[attr-defined]
    bye2 = _request("BYE", contact, client, call_id=call_id, cseq=4, to=to_tagged, branch="z9hG4bK-mem-bye2")
    client.sendto(bye2, (LOOPBACK, edge.port))
    assert (await _reply(client, "BYE")).startswith("SIP/2.0 200 OK")
    stale = _request("INFO", contact, client, call_id=call_id, cseq=4, to=to_tagged, branch="z9hG4bK-mem-info2")
    client.sendto(stale, (LOOPBACK, edge.port))
    assert (await _reply(client, "INFO")).startswith("SIP/2.0 500 Server Internal Error")

    # its ended state runs out: the record goes Dead as the UA did, and leaves the transaction manager
    tm = caller.global_config["_sip_tm"]   # type: ignore[attr-defined]
    deadline = time.monotonic() + GODEAD_S + 5
    while call_id in tm.req_consumers and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert call_id not in tm.req_consumers
    assert type(record.state).__name__ == "UaStateDead"
    assert await music.finish() == 0, music.diagnostics()
