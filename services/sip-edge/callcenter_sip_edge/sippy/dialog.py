"""Dialog operations on sippy UAs that the call logic needs and sippy does not offer as such.

Reads: sippy UA state (`state`, `pending_tr`, `lSDP`). Writes: SIP through sippy UAs (INVITE,
re-INVITE without SDP, the ACK sippy holds, BYE/CANCEL) and `global_config["_sip_tm"]`. Every UA
made here sends a Contact without display name, and a calling display name escaped for a
quoted-string.

Runs in sippy's turns only; imports sippy at import time (so `router`, which imports the call
logic that imports this, is imported on that thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sippy.CCEvents import CCEventDisconnect, CCEventTry
from sippy.SipAddress import SipAddress
from sippy.SipConf import SipConf
from sippy.SipContact import SipContact
from sippy.SipRoute import SipRoute
from sippy.SipURL import SipURL
from sippy.UA import UA
from sippy.UacStateUpdating import UacStateUpdating
from sippy.UaStateConnected import UaStateConnected

log = structlog.get_logger(__name__)

SdpBody = Any  # sippy.MsgBody.MsgBody
EventCallback = Callable[[Any, Any], None]


def sends_by(sip_config: dict[str, Any], transport: str) -> bool:
    """Whether this stack sends requests by `transport`: UDP always, the stream transports when they
    listen (`transport.make_sip_config`'s `_cc_streams`); a ws URI goes by ws or wss alike."""
    if transport == "udp":
        return True
    streams = sip_config.get("_cc_streams")
    names = set() if streams is None else set(streams.servers)
    return transport in names or (transport in ("ws", "wss") and bool(names & {"ws", "wss"}))


class _TryWithRequestUri(CCEventTry):  # type: ignore[misc]
    """CCEventTry that sends the INVITE to the full target URI, URI parameters included.

    sippy builds the Request-URI as sip:<user>@<next hop> and drops URI parameters (e.g. the
    queue position `;cc_pos=3`); its onUacSetupComplete() hook runs before the INVITE is built.
    """

    request_uri: Any = None
    routes: tuple[Any, ...] = ()   # a registered contact's Path (RFC 3327): the INVITE's Route set

    def onUacSetupComplete(self, uac: Any) -> None:
        if self.request_uri is not None:
            uac.rTarget = self.request_uri.getCopy()
        if self.routes:
            uac.routes = [SipRoute(address=SipAddress(url=url.getCopy(), hadbrace=True)) for url in self.routes]


def route_set_of(target: Any) -> tuple[Any, tuple[Any, ...]]:
    """A target URI without its `?Route=` header, and that header's URIs (a registered contact's
    Path, `registrations.Binding.target`): the INVITE goes to the first of them, Route set and all."""
    headers = getattr(target, "headers", None) or {}
    route = headers.get("Route") if isinstance(headers, dict) else None
    if not route:
        return target, ()
    bare = target.getCopy()
    bare.headers = None
    urls = tuple(SipURL(part.strip().removeprefix("<").split(">", 1)[0]) for part in str(route).split(",")
                 if part.strip())
    return bare, urls


def contact_without_display_name() -> Any:
    """The Contact a new UA sends: the edge's own address in angle brackets, with no display name.
    The address stays sippy's placeholders, so it is rendered as before when a message is sent (the
    advertised host, see `sippy.transport`); a UAC's INVITE still puts the calling user in front.

    Why: sippy's default Contact is `Anonymous <sip:host:port>` (SipContact()). That is valid
    RFC 3261, but peers that take the Contact as it stands as the target of their next request
    (SIPp's `[next_url]`, some phones) sent `ACK Anonymous <sip:...> SIP/2.0`, a start line the
    edge drops as malformed: with such a peer no call completed.
    """
    url = SipURL(host=SipConf.my_address, port=SipConf.my_port, transport=SipConf.my_transport)
    return SipContact(address=SipAddress(url=url, hadbrace=True))


def quotable_display_name(name: str | None) -> str | None:
    r"""`name` in the form sippy needs for a display name: the text between the quotes of an RFC 3261
    quoted-string. A `"` or `\\` that does not already start a quoted-pair gets a backslash, CR and
    LF are dropped. A name taken from a caller's From is already in that form (sippy keeps it as
    it was on the wire) and comes back unchanged.

    Why: sippy writes a display name as `"%s"` without escaping it, so a name with a quote in it
    (a flow's caller-id prefix such as `Sales "VIP"`) reached the agent as
    `From: "Sales "VIP" Ann" <sip:...>`, which a parser cannot read as one name.
    """
    if name is None:
        return None
    out: list[str] = []
    chars = iter(name.replace("\r", "").replace("\n", ""))
    for char in chars:
        if char == "\\":
            escaped = next(chars, "\\")   # a quoted-pair stays as it is; a trailing one is doubled
            out.append("\\" + escaped)
        elif char == '"':
            out.append('\\"')
        else:
            out.append(char)
    return "".join(out)


def answering_ua(sip_config: dict[str, Any], event_cb: EventCallback) -> Any:
    """A UA for a new incoming INVITE (the caller's leg); feed it the request with `recvRequest`."""
    ua = UA(sip_config, event_cb)
    ua.lContact = answering_contact()
    return ua


_answering_contact: list[Any] = [None, None]   # the placeholders it was made with, the Contact


def answering_contact() -> Any:
    """The Contact of every leg the edge answers: one object for all of them.

    Why: a UAS never changes its Contact (sippy sets one only when the UA has none; a UAC writes the
    calling user into its own, so those stay one per leg); it is only rendered, with the local
    address filled in at sending. One per caller leg was ~800 bytes per call up. Made again when
    sippy's placeholders are others (a new stack in the same process)."""
    key = (SipConf.my_address, SipConf.my_port, SipConf.my_transport)
    made_for, contact = _answering_contact
    if made_for is None or any(a is not b for a, b in zip(made_for, key, strict=True)):
        contact = contact_without_display_name()
        _answering_contact[:] = [key, contact]
    return contact


def invite(sip_config: dict[str, Any], target: Any, event_cb: EventCallback, *, caller_user: str,
           offer: SdpBody, calling_name: str | None, no_reply_time: float,
           expire_time: float | None = None, extra_headers: list[Any] | None = None,
           prepare: Callable[[Any], None] | None = None) -> Any:
    """Create a UAC leg and send its INVITE (with `offer`, or without SDP for a late offer, and
    `extra_headers`); `prepare(ua)` runs before the INVITE is sent. None if sippy refused to send it."""
    target, routes = route_set_of(target)
    hop = routes[0] if routes else target
    (host, port), transport = hop.getTAddr()   # transport: udp, or tcp/tls/ws/wss (`sippy.streams`)
    if not sends_by(sip_config, str(transport)):
        # not an exception out of sippy's newTransaction (its traceback took 0.2-0.4 s to log)
        log.warning("call.transport_off", uri=str(target), transport=str(transport))
        return None
    ua = UA(sip_config, event_cb, nh_address=(host, port), nh_transport=transport, expire_time=expire_time)
    ua.lContact = contact_without_display_name()
    ua.no_reply_time = no_reply_time
    event = _TryWithRequestUri((None, caller_user, target.username,
                                offer.getCopy() if offer is not None else None, None,
                                quotable_display_name(calling_name)))
    event.request_uri = target
    event.routes = routes
    event.extra_headers = extra_headers
    if prepare is not None:
        prepare(ua)
    try:
        ua.recvEvent(event)
    except Exception:
        log.exception("call.invite_failed", uri=str(target))
        ua.event_cb = None
        return None
    return ua


def hang_up(ua: Any) -> None:
    """End a leg whatever its state (CANCEL before an answer, BYE after), and stop hearing from it."""
    if ua is None:
        return
    ua.event_cb = None
    try:
        if getattr(ua, "pending_tr", None) is not None:
            # a late-offer 200 whose ACK sippy still holds: ACK it before the BYE goes out
            # (sippy would send the BYE first and the ACK only on the state change)
            pending, ua.pending_tr = ua.pending_tr, None
            ua.global_config["_sip_tm"].sendACK(pending)
        ua.recvEvent(CCEventDisconnect())
    except Exception:
        log.exception("call.leg_disconnect_failed")


def is_connected(ua: Any) -> bool:
    """The dialog is confirmed and idle: a re-INVITE may be sent on it."""
    return isinstance(ua.state, UaStateConnected)


def dialog_up(ua: Any) -> bool:
    """The UA's dialog is confirmed and idle or in an offer/answer exchange (not ended)."""
    state = getattr(ua, "state", None)
    return state is not None and bool(getattr(state, "connected", False)) and not getattr(state, "dead", False)


def local_sdp(ua: Any) -> SdpBody:
    """The SDP this side last gave in the dialog (None before any)."""
    return ua.lSDP


def reinvite_without_offer(ua: Any) -> bool:
    """Send a re-INVITE without SDP on a confirmed dialog (RFC 3725 flow I).

    The peer's 2xx then carries an offer, which the UA's event callback gets as
    CCEventConnect((code, reason, offer)) (`on_answer` in `sip_events`); the ACK is held until
    the edge has the answer and passes it with `ua.recvEvent(CCEventConnect((200, "OK", answer)))`,
    the same way as for an initial INVITE without SDP (`ua.pending_tr`). A non-2xx answer (491, 488, ...) comes as
    CCEventFail and the dialog keeps its session. Returns False, sending nothing, if the dialog
    is not idle (an offer/answer exchange or an ACK is outstanding).

    Why: sippy sends a re-INVITE only with an offer (UaStateConnected._recvEventUpdate reads
    the body) and ACKs every 2xx to a re-INVITE at once, without a body.
    """
    if not isinstance(ua.state, UaStateConnected) or ua.pending_tr is not None:
        return False
    req = ua.genRequest("INVITE")
    # what _keep_session_sdp_after_failed_reinvite restores when the re-INVITE fails
    ua.session_sdp_before_update = ua.lSDP

    def on_response(resp: Any, tr: Any) -> None:
        code = resp.getSCode()[0]
        if 200 <= code < 300 and resp.getBody() is not None and ua.pending_tr is None:
            # set before the transaction manager builds the ACK: it holds it (state UACK)
            tr.uack = True
            ua.pending_tr = tr
        ua.recvResponse(resp, tr)

    ua.tr = ua.newTransaction(req, resp_cb=on_response, cb_ifver=2)
    ua.changeState((UacStateUpdating,))
    return True


def on_ack_of_answer(ua: Any, on_ack: Callable[[SdpBody | None], None]) -> bool:
    """Call `on_ack` with the ACK's body (the caller's answer when our 2xx carried an offer: a
    caller's late offer) when the ACK of the 2xx just sent on `ua` (a UAS answering the caller's INVITE)
    arrives; False (nothing armed) if that 2xx's transaction is not found.

    Why: sippy tells the UA of that ACK only when the 2xx carried an offer (`ack_wait`); for a 2xx
    with an answer it drops the ACK in the transaction manager, so the edge could not tell a caller
    whose dialog is confirmed from one that never ACKs (and sippy gives up only after 32 s). After
    a 2xx the server transaction is keyed by (Call-ID, From tag, CSeq, To tag) and calls its
    `ack_cb` with the ACK. Our callback does not go through `UA.recvACK`, which would also take
    the SDP of a body-less ACK to be "no remote SDP".
    """
    resp = getattr(ua, "uasResp", None)
    if resp is None:
        return False
    tid = (*resp.getTId(), resp.getHFBody("to").getTag())
    transaction = ua.global_config["_sip_tm"].tserver.get(tid)
    if transaction is None:
        return False
    transaction.ack_cb = lambda ack: on_ack(ack.getBody())
    return True
