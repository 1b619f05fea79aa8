"""A confirmed dialog as plain data, and a sippy UA rebuilt from it (an adopted call's leg); an
INVITE still being set up as plain data, and its CANCEL sent from a new process.

Reads: sippy UA state (`cId`, `lUri`, `rUri`, `lCSeq`, `rCSeq`, `rTarget`, `routes`, `rAddr`,
`lContact`, `lSDP`, `rSDP`). Writes: a UA in sippy's Connected state, registered with the
transaction manager (`global_config["_sip_tm"]`) for its Call-ID, so that a BYE, re-INVITE or
UPDATE of the peer is matched to it and answered, and a BYE can be sent on it.

Runs in sippy's turns only. The snapshot is made when the dialog is confirmed (`dialog_snapshot`,
plain str/int/list data, JSON-safe); `resume_dialog` is its inverse in a new process.
`invite_snapshot` keeps the INVITE as sippy sent it (`tr.data`, already a string: nothing is
formatted) and its next hop; `cancel_invite` takes the INVITE transaction back up in a new process
and cancels it (see there). `caller_snapshot` keeps what answers a caller's INVITE we have not
answered yet (the response template sippy made for it: Via stack, From, To with our tag, Call-ID,
CSeq); `answer_caller` sends its final response from a new process, in a server transaction.
"""

from __future__ import annotations

from typing import Any

from sippy.MsgBody import MsgBody
from sippy.SipCallId import SipCallId
from sippy.SipContact import SipContact
from sippy.SipFrom import SipFrom
from sippy.SipGenericHF import SipGenericHF
from sippy.SipHeader import SipHeader
from sippy.SipRequest import SipRequest
from sippy.SipResponse import SipResponse
from sippy.SipRoute import SipRoute
from sippy.SipTo import SipTo
from sippy.SipTransactionManager import TRYING, SipTransaction
from sippy.SipURL import SipURL
from sippy.Time.MonoTime import MonoTime
from sippy.UA import UA
from sippy.UacStateRinging import UacStateRinging
from sippy.UacStateTrying import UacStateTrying
from sippy.UaStateConnected import UaStateConnected

from callcenter_sip_edge.sippy.dialog import EventCallback, hang_up
from callcenter_sip_edge.sippy.ended_dialog import registered
from callcenter_sip_edge.sippy.transport import remember_peer

# Our requests after a restart skip this many CSeq numbers: a request the dead process sent after
# its last checkpoint (a re-INVITE not yet answered) used some; CSeq must only grow (RFC 3261 12.2.1.1).
CSEQ_SKIP = 100


def dialog_snapshot(ua: Any) -> dict[str, Any]:
    """What a confirmed leg needs to continue in another process: Call-ID, From/To with their tags
    (ours first), CSeq counters, route set, remote target and next hop, our Contact, last SDPs."""
    (host, port), transport = ua.rAddr
    return {
        "call_id": str(ua.cId), "local": str(ua.lUri), "remote": str(ua.rUri),
        "local_cseq": int(ua.lCSeq), "remote_cseq": None if ua.rCSeq is None else int(ua.rCSeq),
        "routes": [str(route) for route in ua.routes or ()], "target": str(ua.rTarget),
        "next_hop": [str(host), int(port)], "transport": str(transport), "contact": str(ua.lContact),
        "local_sdp": None if ua.lSDP is None else str(ua.lSDP),
        "remote_sdp": None if ua.rSDP is None else str(ua.rSDP),
        "peers": list(getattr(ua, "cc_peer_hosts", ())),
    }


def resume_dialog(sip_config: dict[str, Any], snap: dict[str, Any], event_cb: EventCallback) -> Any:
    """A UA in the Connected state for the dialog `snap` describes (raises on a malformed one)."""
    host, port = snap["next_hop"]
    # a leg over TCP/TLS goes on over it (checkpoints written before the transport was kept: UDP)
    ua = UA(sip_config, event_cb, nh_address=(str(host), int(port)), nh_transport=str(snap.get("transport", "udp")))
    ua.cId = _parsed(SipCallId(body=snap["call_id"]))
    ua.lUri = _parsed(SipFrom(body=snap["local"]))
    ua.rUri = _parsed(SipTo(body=snap["remote"]))
    ua.lTag = ua.lUri.getTag()
    ua.lCSeq = int(snap["local_cseq"]) + CSEQ_SKIP
    ua.rCSeq = snap["remote_cseq"]
    ua.routes = [_parsed(SipRoute(body=route)) for route in snap["routes"]]
    ua.rTarget = SipURL(snap["target"])
    ua.lContact = _parsed(SipContact(body=snap["contact"]))
    ua.lSDP = _body(snap["local_sdp"])
    ua.rSDP = _body(snap["remote_sdp"])
    for peer in snap.get("peers") or ():
        remember_peer(ua, str(peer))
    ua.changeState((UaStateConnected,))
    sip_config["_sip_tm"].regConsumer(ua, str(ua.cId), compact=ua.compact_sip)
    return ua


def _parsed(header: Any) -> Any:
    """A header built from its text, parsed now (sippy parses on first use through a message only):
    a malformed snapshot fails here, not at the peer's BYE."""
    header.parse()
    return header


def _body(content: str | None) -> Any:
    return None if content is None else MsgBody(content)


def invite_snapshot(ua: Any) -> dict[str, Any] | None:
    """The INVITE of a leg still being set up (no final response yet, or a 2xx whose ACK we still
    hold: a late offer waiting for its answer), as sent, with its next hop; None otherwise.
    Cheap: `tr.data` is the string sippy transmitted (no formatting here)."""
    tr = getattr(ua, "tr", None)
    if tr is None or getattr(tr, "method", None) != "INVITE" or getattr(tr, "data", None) is None:
        return None
    state = ua.state
    setting_up = type(state) in (UacStateTrying, UacStateRinging)
    if not setting_up and getattr(ua, "pending_tr", None) is not tr:
        return None
    host, port = tr.address
    return {"invite": tr.data, "next_hop": [str(host), int(port)]}


def cancel_invite(sip_config: dict[str, Any], snap: dict[str, Any], event_cb: EventCallback) -> Any:
    """End, from a new process, an INVITE the dead one had sent (`invite_snapshot`); raises on a
    malformed snapshot.

    The INVITE transaction's state died with the process, so it is taken back up: the INVITE is sent
    again byte for byte (same branch: a retransmission, RFC 3261 17.1.1.2), which the callee's server
    transaction answers with its latest response. Then sippy's CANCEL goes out as RFC 3261 9.1 asks:
    built from that INVITE (same Request-URI, Call-ID, From, To, CSeq number, the one Via with its
    branch) and only once a provisional response came (none: the INVITE times out, nothing rings).
    A 487 (or any other final failure) is ACKed by the transaction; a 200 that crossed the CANCEL,
    or that the callee kept retransmitting for lack of an ACK, is ACKed and the dialog gets BYE
    (sippy's Cancelling state). A plain BYE could not do this: there is no dialog before a 2xx, and
    a CANCEL without the INVITE's branch matches no transaction at the callee."""
    host, port = snap["next_hop"]
    request = SipRequest(snap["invite"])
    request.setTarget(((str(host), int(port)), "udp"))
    ua = UA(sip_config, event_cb, nh_address=(str(host), int(port)))
    ua.cId = request.getHFBody("call-id").getCopy()
    ua.lUri = request.getHFBody("from").getCopy()
    ua.rUri = request.getHFBody("to").getCopy()
    ua.lTag = ua.lUri.getTag()
    ua.lCSeq = request.getHFBody("cseq").getCSeqNum()
    ua.rTarget = request.getRURI().getCopy()
    ua.routes = [route.getCopy() for route in request.getHFBodys("route")]
    if request.countHFs("contact") > 0:
        ua.lContact = request.getHFBody("contact").getCopy()
    ua.changeState((UacStateTrying,))
    # as sippy's Idle state does for a new INVITE: the dialog's requests (a BYE after a 200) reach
    # this UA, and its end unregisters it
    sip_config["_sip_tm"].regConsumer(ua, str(ua.cId), compact=ua.compact_sip)
    ua.newUacTransaction(request)
    hang_up(ua)   # in the Trying state: a CANCEL, sent once a provisional response comes
    return ua


def forget_dialog(ua: Any) -> None:
    """Stop handling a dialog without a word to its peer (another edge carries it on): no more
    events, and its requests no longer reach this UA (this process answers them 481)."""
    if ua is None:
        return
    ua.event_cb = None
    try:
        ua.global_config["_sip_tm"].unregConsumer(registered(ua), str(ua.cId))
    except (KeyError, ValueError, AttributeError):
        pass   # never registered (a leg whose INVITE was not sent)


# The final response a restarted edge sends a caller whose INVITE it had not answered: the call is
# over (its CDR says edge_restarted); Retry-After: the caller (or its carrier) may try again at once.
RESTART_ANSWER = (500, "Server Internal Error")
RESTART_RETRY_AFTER_S = 0


def caller_snapshot(ua: Any) -> dict[str, Any] | None:
    """What answers the caller's INVITE of the UAS leg `ua` from another process: the response
    template sippy made when the INVITE came (`uasResp`: the Via stack with received/rport, From,
    To with our tag, Call-ID, CSeq), as text. None for a caller over TCP/TLS: its connection dies
    with the process, and the caller's transaction fails on that at once (RFC 3261 17.1.4)."""
    resp = getattr(ua, "uasResp", None)
    if resp is None or str(resp.getHFBody("via").transport).upper() != "UDP":
        return None
    return {"response": str(resp)}


def answer_caller(sip_config: dict[str, Any], snap: dict[str, Any]) -> tuple[str, int]:
    """Send, from a new process, the final response `RESTART_ANSWER` (with Retry-After) to a caller
    whose INVITE the dead process had not answered (`caller_snapshot`); returns where it went.

    It goes out in a server INVITE transaction registered with sippy's transaction manager as if the
    INVITE had just come: the response is retransmitted until the caller's ACK (timer G, unreliable
    transport) and the ACK is absorbed (matched by our To tag), as for any other final response."""
    tm = sip_config["_sip_tm"]
    resp = SipResponse(snap["response"])
    resp.setSCode(*RESTART_ANSWER)
    resp.delHFs("retry-after")
    resp.appendHeader(SipHeader(name="retry-after", body=SipGenericHF(str(RESTART_RETRY_AFTER_S), "retry-after")))
    via = resp.getHFBody("via")
    address = via.getTAddr()
    t = SipTransaction()
    t.tid = resp.getTId(wBRN=True)
    t.state = TRYING
    t.method = "INVITE"
    t.teA = t.teD = t.teE = t.teF = t.teG = None
    t.noack_cb = t.ack_cb = t.cancel_cb = t.r487 = None
    t.rtime = MonoTime()
    t.userv = tm.l4r.getServer(address)
    t.needack = True
    t.branch = via.getBranch()
    tm.tserver[t.tid] = t
    tm.sendResponse(resp, t)
    return (str(address[0]), int(address[1]))
