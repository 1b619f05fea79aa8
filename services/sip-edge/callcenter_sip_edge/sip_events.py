"""sippy's call-control events (CCEvent*) turned into named calls on a leg's handler, and back.

Reads: the CCEvent* a sippy UA hands to its event callback (`deliver`).
Writes: CCEvent* into a UA (`answer`, `refuse`, `ring`, `offer`, `pass_info`), which sippy turns
into SIP.

The call logic (`call`, `media`, `agent`, `forks`, `whisper`, `offers`) hears and speaks only
through this module, so none of it imports a sippy event class. Event data are unpacked here,
once, by position as sippy builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sippy.CCEvents import (
    CCEventConnect,
    CCEventDisconnect,
    CCEventFail,
    CCEventInfo,
    CCEventPreConnect,
    CCEventRedirect,
    CCEventRing,
    CCEventTry,
    CCEventUpdate,
)

from callcenter_sip_edge.legs import SdpBody, SipUA


class LegEvents:
    """What a leg hears from its UA. Every method is a no-op unless a leg's handler overrides it;
    `ua` is the UA that sent the event (a handler checks it is still its leg's)."""

    __slots__ = ()

    def current(self, ua: SipUA) -> LegEvents | None:
        """The handler for an event of `ua` now (e.g. the one of the leg's phase); None: ignore it."""
        return self

    def on_invite(self, ua: SipUA, offer: SdpBody | None) -> None:
        """A new INVITE with the caller's offer (CCEventTry; the caller's leg only)."""

    def on_ringing(self, ua: SipUA) -> None:
        """A provisional response (CCEventRing)."""

    def on_answer(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        """A 2xx (CCEventConnect): the answer to our offer, or the offer in the 2xx to a re-INVITE
        without SDP, or the answer to an offer relayed to this leg."""

    def on_ack(self, ua: SipUA) -> None:
        """The ACK of our 2xx (CCEventConnect with code 'ACK'; the caller's leg only)."""

    def on_offer(self, ua: SipUA, offer: SdpBody | None) -> None:
        """A 2xx to our INVITE without SDP (CCEventPreConnect): the peer's offer; sippy holds the
        ACK until `answer()` gives it the answer."""

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        """A final error response (CCEventFail), to an INVITE or to a re-INVITE."""

    def on_redirect(self, ua: SipUA, code: int, reason: str) -> None:
        """A 3xx with a Contact (CCEventRedirect), to an INVITE or to a re-INVITE."""

    def on_hangup(self, ua: SipUA) -> None:
        """BYE or CANCEL from the peer, or sippy gave up on the leg (CCEventDisconnect)."""

    def on_reoffer(self, ua: SipUA, offer: SdpBody | None) -> None:
        """An in-dialog re-INVITE or UPDATE with an offer (CCEventUpdate); answer or refuse it."""

    def on_info(self, ua: SipUA, info: object) -> None:
        """An in-dialog INFO (CCEventInfo); `info` is passed on as it is."""


def _connect(sink: LegEvents, event: Any, ua: SipUA) -> None:
    data = event.getData()
    if data[0] == "ACK":
        sink.on_ack(ua)
    else:
        sink.on_answer(ua, data[0], data[1], data[2])


def _fail(sink: LegEvents, event: Any, ua: SipUA) -> None:
    data = event.getData()
    sink.on_failed(ua, data[0], data[1])


def _redirect(sink: LegEvents, event: Any, ua: SipUA) -> None:
    data = event.getData()
    sink.on_redirect(ua, data[0], data[1])


_DELIVERY: dict[type, Callable[[LegEvents, Any, Any], None]] = {
    CCEventTry: lambda sink, event, ua: sink.on_invite(ua, event.getData()[3]),
    CCEventRing: lambda sink, event, ua: sink.on_ringing(ua),
    CCEventConnect: _connect,
    CCEventPreConnect: lambda sink, event, ua: sink.on_offer(ua, event.getData()[2]),
    CCEventFail: _fail,
    CCEventRedirect: _redirect,
    CCEventDisconnect: lambda sink, event, ua: sink.on_hangup(ua),
    CCEventUpdate: lambda sink, event, ua: sink.on_reoffer(ua, event.getData()),
    CCEventInfo: lambda sink, event, ua: sink.on_info(ua, event.getData()),
}


def deliver(sink: LegEvents, event: Any, ua: SipUA) -> None:
    """Call the method of `sink` that names `event` (events of other kinds are ignored)."""
    handler = _DELIVERY.get(event.__class__)
    if handler is not None:
        handler(sink, event, ua)


def int_code(code: object) -> int | None:
    """A status code as the facts carry it: an int, or None if sippy gave something else."""
    return code if isinstance(code, int) else None


# ---------------------------------------------------------------------------------- to sippy
def answer(ua: SipUA, body: SdpBody | None, code: int = 200, reason: str = "OK") -> None:
    """Answer the INVITE/re-INVITE/UPDATE pending on `ua` (or ACK a held 2xx) with `body`."""
    ua.recvEvent(CCEventConnect((code, reason, body.getCopy() if body is not None else None)))


def refuse(ua: SipUA, code: int, reason: str) -> None:
    """Answer the request pending on `ua` with an error response."""
    ua.recvEvent(CCEventFail((code, reason)))


def ring(ua: SipUA) -> None:
    """Send 180 Ringing on the caller's leg (local ringback until a leg answers)."""
    ua.recvEvent(CCEventRing((180, "Ringing", None)))


def offer(ua: SipUA, body: SdpBody) -> None:
    """Send `body` as an offer in a re-INVITE on `ua`'s confirmed dialog."""
    ua.recvEvent(CCEventUpdate(body.getCopy()))


def pass_info(ua: SipUA, info: object) -> None:
    """Send an INFO with what another leg's INFO carried."""
    ua.recvEvent(CCEventInfo(info))
