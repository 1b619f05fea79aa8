"""A confirmed dialog as plain data, and a sippy UA rebuilt from it (an adopted call's leg).

Reads: sippy UA state (`cId`, `lUri`, `rUri`, `lCSeq`, `rCSeq`, `rTarget`, `routes`, `rAddr`,
`lContact`, `lSDP`, `rSDP`). Writes: a UA in sippy's Connected state, registered with the
transaction manager (`global_config["_sip_tm"]`) for its Call-ID, so that a BYE, re-INVITE or
UPDATE of the peer is matched to it and answered, and a BYE can be sent on it.

Runs on the SIP thread only. The snapshot is made when the dialog is confirmed (`dialog_snapshot`,
plain str/int/list data, JSON-safe); `resume_dialog` is its inverse in a new process.
"""

from __future__ import annotations

from typing import Any

from sippy.MsgBody import MsgBody
from sippy.SipCallId import SipCallId
from sippy.SipContact import SipContact
from sippy.SipFrom import SipFrom
from sippy.SipRoute import SipRoute
from sippy.SipTo import SipTo
from sippy.SipURL import SipURL
from sippy.UA import UA
from sippy.UaStateConnected import UaStateConnected

from callcenter_sip_edge.sippy.dialog import EventCallback
from callcenter_sip_edge.sippy.transport import remember_peer

# Our requests after a restart skip this many CSeq numbers: a request the dead process sent after
# its last checkpoint (a re-INVITE not yet answered) used some; CSeq must only grow (RFC 3261 12.2.1.1).
CSEQ_SKIP = 100


def dialog_snapshot(ua: Any) -> dict[str, Any]:
    """What a confirmed leg needs to continue in another process: Call-ID, From/To with their tags
    (ours first), CSeq counters, route set, remote target and next hop, our Contact, last SDPs."""
    (host, port), _transport = ua.rAddr
    return {
        "call_id": str(ua.cId), "local": str(ua.lUri), "remote": str(ua.rUri),
        "local_cseq": int(ua.lCSeq), "remote_cseq": None if ua.rCSeq is None else int(ua.rCSeq),
        "routes": [str(route) for route in ua.routes or ()], "target": str(ua.rTarget),
        "next_hop": [str(host), int(port)], "contact": str(ua.lContact),
        "local_sdp": None if ua.lSDP is None else str(ua.lSDP),
        "remote_sdp": None if ua.rSDP is None else str(ua.rSDP),
        "peers": list(getattr(ua, "cc_peer_hosts", ())),
    }


def resume_dialog(sip_config: dict[str, Any], snap: dict[str, Any], event_cb: EventCallback) -> Any:
    """A UA in the Connected state for the dialog `snap` describes (raises on a malformed one)."""
    host, port = snap["next_hop"]
    ua = UA(sip_config, event_cb, nh_address=(str(host), int(port)))
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
