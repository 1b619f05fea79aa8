"""The call's media legs (welcome, queue, dissuading): set-up, the switch of the caller, the end.

Reads: `command.media` (through `Call.media_command`) and the events of the media legs' UAs.
Writes: INVITEs to media servers, re-INVITEs of the caller (through `CallerOffers`), BYEs, and the
facts `media_answered`, `media_failed`, `media_ended`.

The first media leg gets the caller's offer and answers the caller; a later one is INVITEd
without SDP and its offer goes to the caller in a re-INVITE (RFC 3725 flow I).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from callcenter_sip_edge import late_offer, sip_events
from callcenter_sip_edge.confirmed import checkpoint
from callcenter_sip_edge.legs import MEDIA_SETUP_TIMEOUT_S, MediaLeg, Phase, SdpBody, SipUA, parse_target_uri
from callcenter_sip_edge.offers import RelayingLeg
from callcenter_sip_edge.sip_events import LegEvents
from callcenter_sip_edge.sippy import dialog

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

log = structlog.get_logger(__name__)


class MediaLegs(LegEvents):
    """The media leg the caller hears (`call.media`) and the one being set up (`call.media_pending`);
    their events go to `_MediaSetup` and `_MediaPlaying`."""

    __slots__ = ("_playing", "_setup", "call")

    def __init__(self, call: Call) -> None:
        self.call = call
        self._setup = _MediaSetup(self)
        self._playing = _MediaPlaying(self)

    def start(self, uri: str, purpose: str) -> None:
        call = self.call
        agent_phase = call.agent.phase if call.agent else None
        if call.media_pending is not None or agent_phase in (Phase.BRIDGING, Phase.TALKING) or (
            not call.caller_answered and (call.agent is not None or bool(call.forks.legs))
        ):
            call.refuse("media", purpose=purpose, media_pending=call.media_pending is not None,
                         agent_phase=agent_phase.value if agent_phase else None)
            return
        target = parse_target_uri(uri)
        if target is None:
            call.emit("media_failed", purpose=purpose, code=None, reason="bad_uri")
            return
        early = not call.caller_answered
        leg = MediaLeg(ua=None, uri=uri, purpose=purpose, early_offer=early)
        call.media_pending = leg
        leg.ua = call.invite(target, self, offer=call.caller_offer if early else None,
                             calling_name=call.info.caller_display, expire_time=MEDIA_SETUP_TIMEOUT_S)
        if leg.ua is None:
            call.media_pending = None
            call.emit("media_failed", purpose=purpose, code=None, reason="unreachable")
            return
        log.info("call.media_inviting", purpose=purpose, uri=uri, early_offer=early)

    def current(self, ua: SipUA) -> LegEvents | None:
        call = self.call
        if call.media_pending is not None and call.media_pending.ua is ua:
            return self._setup
        if call.media is not None and call.media.ua is ua:
            return self._playing
        return None

    # ------------------------------------------------------------------ outcomes
    def switched(self, leg: MediaLeg, answer: SdpBody | None, *, acked: bool = False) -> None:
        """The caller is on `leg` now (`answer`: the caller's, for the leg's held ACK; `acked`: that
        ACK was sent already)."""
        call = self.call
        if call.media_pending is not leg:
            return
        assert leg.ua is not None
        if not acked:
            sip_events.answer(leg.ua, answer)
        previous, call.media, call.media_pending = call.media, leg, None
        if previous is not None:
            dialog.hang_up(previous.ua)
        call.emit("media_answered", purpose=leg.purpose, uri=leg.uri)
        checkpoint(call)

    def setup_failed(self, leg: MediaLeg, code: int | None, reason: str, leg_gone: bool = False) -> None:
        call = self.call
        if call.media_pending is not leg:
            return
        call.media_pending = None
        call.offers.forget(leg)
        if not leg_gone:
            dialog.hang_up(leg.ua)
        log.info("call.media_failed", purpose=leg.purpose, code=code, reason=reason)
        call.emit("media_failed", purpose=leg.purpose, code=code, reason=reason)

    def ended(self, ua: SipUA) -> None:
        """The media server hung up on the caller."""
        call = self.call
        leg = call.media
        assert leg is not None
        call.offers.abort_relay_involving(ua)
        call.media = None
        call.emit("media_ended", purpose=leg.purpose)

    def drop_all(self) -> None:
        """Hang up both media legs: the agent took the caller."""
        call = self.call
        for leg in (call.media, call.media_pending):
            if leg is not None:
                call.offers.forget(leg)
                dialog.hang_up(leg.ua)
        call.media = call.media_pending = None


class _MediaSetup(LegEvents):
    """`call.media_pending`: INVITEd, not answered yet (or its offer is on its way to the caller)."""

    __slots__ = ("media",)

    def __init__(self, media: MediaLegs) -> None:
        self.media = media

    def _leg(self) -> MediaLeg:
        leg = self.media.call.media_pending
        assert leg is not None
        return leg

    def on_answer(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        leg, call = self._leg(), self.media.call
        if not leg.early_offer or body is None:
            # late offer answered without an offer: nothing to give the caller
            self.media.setup_failed(leg, sip_events.int_code(code), "no_sdp")
            return
        call.media_pending = None
        call.media = leg
        call.answer_caller(body, lambda: self._caller_on_media(leg))

    def _caller_on_media(self, leg: MediaLeg) -> None:
        # the caller ACKed: it hears this leg (its dialog is confirmed), unless the leg already
        # ended (media_ended said so)
        call = self.media.call
        if call.media is leg:
            call.emit("media_answered", purpose=leg.purpose, uri=leg.uri)
            checkpoint(call)

    def on_offer(self, ua: SipUA, offer: SdpBody | None) -> None:
        leg, media = self._leg(), self.media
        if offer is None:
            media.setup_failed(leg, None, "no_sdp")
            return
        if leg.early_offer:
            # the caller sent no offer: this leg's offer goes in our 200 (late_offer.py)
            late_offer.answer_caller_with_offer(media.call, ua, offer, lambda: media.switched(leg, None, acked=True))
            return
        media.call.offers.reinvite_caller(offer, leg, lambda answer: media.switched(leg, answer),
                                          lambda code, reason: media.setup_failed(leg, code, reason))

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        self.media.setup_failed(self._leg(), code, str(reason), leg_gone=True)

    def on_redirect(self, ua: SipUA, code: int, reason: str) -> None:
        self.media.setup_failed(self._leg(), code, str(reason), leg_gone=True)

    def on_hangup(self, ua: SipUA) -> None:
        self.media.setup_failed(self._leg(), None, "timeout", leg_gone=True)


class _MediaPlaying(RelayingLeg):
    """`call.media`: the caller hears it; offers pass between the two."""

    __slots__ = ("media",)

    def __init__(self, media: MediaLegs) -> None:
        super().__init__(media.call.offers)
        self.media = media

    def on_hangup(self, ua: SipUA) -> None:
        self.media.ended(ua)
