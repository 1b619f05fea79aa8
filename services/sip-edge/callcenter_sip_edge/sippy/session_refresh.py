"""RFC 4028 session timers on sippy UAs: reading and writing the headers, hooking a leg's UA so the
timer hears its refreshes and its 2xx responses carry Session-Expires, and sending a refresh.

Reads: Session-Expires (compact `x`), Min-SE, Supported/Require and Allow of a SIP message; the
in-dialog requests and the responses of a hooked UA. Writes: the timer headers of the 2xx a hooked
UA sends, in-dialog UPDATE or re-INVITE refreshes, and the 422 of an INVITE whose interval is too
small.

Why here: sippy knows nothing of session timers. A UA's `recvRequest`, `recvResponse` and
`sendUasResponse` are replaced on the instance (before its first transaction), so every request
the peer sends in the dialog, every response to our INVITEs and every 2xx we send pass the hook.
A refresh is a transaction of its own on the UA's dialog (UA.genRequest keeps the CSeq order):
an UPDATE without SDP where the peer allows it (RFC 4028 7.4), else a re-INVITE with the SDP we
last gave (the transaction manager ACKs its 2xx), outside sippy's state machine, which never
hears of it; it is sent only while the dialog is idle.

Runs in sippy's turns only (`reactor.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sippy.SipGenericHF import SipGenericHF
from sippy.SipHeader import SipHeader
from sippy.UaStateConnected import UaStateConnected

log = structlog.get_logger(__name__)


def header(name: str, value: str) -> Any:
    """A header sippy has no class for (Session-Expires, Min-SE, Require...): written with the RFC's
    spelling like every header (`header_names`, applied in `patches`)."""
    return SipHeader(name=name, body=SipGenericHF(value, name))


def _values(msg: Any, *names: str) -> list[str]:
    out: list[str] = []
    for name in names:
        out.extend(str(body) for body in msg.getHFBodys(name))
    return out


def session_expires(msg: Any) -> tuple[int, str | None] | None:
    """(delta-seconds, refresher or None) of the message's Session-Expires; None if it has none or
    it is unreadable."""
    values = _values(msg, "session-expires", "x")
    if not values:
        return None
    parts = [part.strip() for part in values[0].split(";")]
    try:
        delta = int(parts[0])
    except ValueError:
        return None
    refresher = None
    for param in parts[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "refresher" and value.strip().lower() in ("uac", "uas"):
            refresher = value.strip().lower()
    return (delta, refresher) if delta > 0 else None


def min_se(msg: Any) -> int | None:
    values = _values(msg, "min-se")
    try:
        return int(values[0].split(";")[0].strip()) if values else None
    except ValueError:
        return None


def _has_token(msg: Any, token: str, *names: str) -> bool:
    return any(token in (t.strip().lower() for t in value.split(",")) for value in _values(msg, *names))


def supports_timer(msg: Any) -> bool:
    return _has_token(msg, "timer", "supported", "k", "require")


def allows_update(msg: Any) -> bool:
    return _has_token(msg, "update", "allow")


def too_small(req: Any, minimum: int) -> Any:
    """The 422 (Session Interval Too Small) for `req`, saying our Min-SE."""
    resp = req.genResponse(422, "Session Interval Too Small")
    resp.appendHeader(header("min-se", str(minimum)))
    return resp


def hook(ua: Any, *, on_request: Callable[[Any], Any], on_response: Callable[[Any], bool],
         headers_for_2xx: Callable[[], list[Any]]) -> None:
    """Hook `ua`: `on_request(req)` sees each request the peer sends (it may return sippy's
    (response, cancel_cb, noack_cb) to answer it itself), `on_response(resp)` each response to the
    UA's own transactions (True: it dealt with it, the UA never hears of it), and every 2xx the UA
    sends gets `headers_for_2xx()`."""
    hooked = _Hooked(ua, on_request, on_response, headers_for_2xx)
    ua.recvRequest, ua.recvResponse, ua.sendUasResponse = hooked.request, hooked.response, hooked.send


class _Hooked:
    """What `hook` puts in front of a UA's three methods: one slotted object per hooked UA (three
    closures and their cells were ~1 KB per UA, a call has one or two)."""

    __slots__ = ("headers_for_2xx", "on_request", "on_response", "recv_request", "recv_response",
                 "send_uas_response")

    def __init__(self, ua: Any, on_request: Callable[[Any], Any], on_response: Callable[[Any], bool],
                 headers_for_2xx: Callable[[], list[Any]]) -> None:
        self.on_request, self.on_response, self.headers_for_2xx = on_request, on_response, headers_for_2xx
        self.recv_request, self.recv_response, self.send_uas_response = \
            ua.recvRequest, ua.recvResponse, ua.sendUasResponse

    def request(self, req: Any, sip_t: Any) -> Any:
        answered = self.on_request(req)
        return answered if answered is not None else self.recv_request(req, sip_t)

    def response(self, resp: Any, tr: Any) -> Any:
        if self.on_response(resp):
            return None
        return self.recv_response(resp, tr)

    def send(self, scode: int, reason: str, body: Any = None, contacts: Any = None, extra_headers: Any = None,
             ack_wait: bool = False) -> Any:
        if 200 <= scode < 300:
            extra_headers = [*(extra_headers or ()), *self.headers_for_2xx()]
        return self.send_uas_response(scode, reason, body, contacts, extra_headers=extra_headers, ack_wait=ack_wait)


def retry_invite(ua: Any, resp: Any, headers: list[Any]) -> bool:
    """Send the INVITE that got `resp` (a 422) again with `headers` in place of the timer headers,
    as sippy itself does after a 401/407 (UA.processChallenge): a new transaction on the same
    dialog-to-be. False if that INVITE is not the UA's pending one."""
    cseq = resp.getHFBody("cseq").getCSeqNum()
    if cseq not in ua.reqs:
        return False
    req = ua.genRequest("INVITE", ua.lSDP, extra_headers=headers)
    ua.newUacTransaction(req, req_extra_headers=headers)
    del ua.reqs[cseq]
    return True


def answer_refresh_update(ua: Any, req: Any, headers: list[Any]) -> Any:
    """Answer an in-dialog UPDATE without SDP (a pure refresh) with 200 and our timer headers;
    None (not ours to answer) if it has a body, is not in order, or the dialog is not confirmed."""
    if req.getMethod() != "UPDATE" or req.getBody() is not None or not isinstance(ua.state, UaStateConnected):
        return None
    cseq = req.getHFBody("cseq").getCSeqNum()
    if ua.rCSeq is not None and ua.rCSeq >= cseq:
        return None
    ua.rCSeq = cseq
    resp = req.genResponse(200, "OK", server=ua.local_ua)
    for item in headers:
        resp.appendHeader(item)
    return (resp, None, None)


def is_in_dialog_refresh(req: Any) -> bool:
    return req.getMethod() in ("INVITE", "UPDATE") and req.getHFBody("to").getTag() is not None


def send_refresh(ua: Any, method: str, headers: list[Any], on_result: Callable[[int, Any], None]) -> bool:
    """Send a refresh (`UPDATE`, or `INVITE` with our last SDP) on `ua`'s dialog; `on_result(code,
    response)` gets its final response (sippy's own 408 when the peer never answers). False if the
    dialog is not idle now (an offer/answer exchange or a held ACK is outstanding)."""
    if not isinstance(ua.state, UaStateConnected) or getattr(ua, "pending_tr", None) is not None:
        return False
    body = ua.lSDP.getCopy() if method == "INVITE" and ua.lSDP is not None else None
    if method == "INVITE" and body is None:
        return False
    req = ua.genRequest(method, body, extra_headers=headers)

    def result(resp: Any, tr: Any = None) -> None:
        code = resp.getSCode()[0]
        if code >= 200:
            on_result(code, resp)

    ua.newTransaction(req, resp_cb=result)
    return True
