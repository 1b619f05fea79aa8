"""The caller's offers: re-INVITEs of the caller that the edge originates, one at a time, and the
in-dialog offers relayed between the two sides of a bridged call (hold/resume).

Reads: the caller's answers to those re-INVITEs and the offers any leg sends (both passed in by
the legs' handlers). Writes: re-INVITEs to the caller, relayed offers and their answers, through
`sip_events`.

Only one re-INVITE towards the caller runs at a time: a queue (`CallerReinvite`), a 491 back-off
(`GLARE_*`), and a wait for sippy's ACK of the previous one; a relayed offer also holds the queue.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from sippy.Time.Timeout import Timeout

from callcenter_sip_edge import sip_events
from callcenter_sip_edge.confirmed import checkpoint
from callcenter_sip_edge.legs import CALLER_REINVITE_TIMEOUT_S, Phase, SdpBody, SipUA, Timer, cancel_timers
from callcenter_sip_edge.sip_events import LegEvents
from callcenter_sip_edge.sippy import dialog

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

log = structlog.get_logger(__name__)

# RFC 3261 14.1: after a 491, retry after 2.1-4 s if we own the Call-ID, 0-2 s otherwise.
# The caller owns the caller leg's Call-ID.
GLARE_RETRY_S = (0.0, 2.0)
# ... and the edge owns the agent leg's Call-ID (the re-INVITE after the flow-id message)
GLARE_RETRY_OWN_S = (2.1, 4.0)
GLARE_MAX_ATTEMPTS = 5


@dataclass
class CallerReinvite:
    """A re-INVITE of the caller that the edge itself originates (moving the caller to a leg)."""

    offer: SdpBody
    owner: object              # the leg whose offer this is; dropped if that leg goes away
    on_answer: Callable[[SdpBody | None], None]
    on_failure: Callable[[int | None, str], None]
    attempts: int = 0


@dataclass
class RelayedOffer:
    """A re-INVITE/UPDATE from one side of a bridged call, waiting for the other side's answer."""

    source: SipUA
    target: SipUA


class CallerOffers:
    """The re-INVITE queue of one call's caller leg, and the offer being relayed, if any."""

    __slots__ = ("_ack_pending_timer", "_answer_timer", "_glare_timer", "call", "in_flight", "queue", "relay")

    def __init__(self, call: Call) -> None:
        self.call = call
        # a list: 0-2 re-INVITEs wait at a time, and an empty deque costs ~700 bytes per call
        self.queue: list[CallerReinvite] = []
        self.in_flight: CallerReinvite | None = None
        self.relay: RelayedOffer | None = None
        self._glare_timer: Timer | None = None
        self._ack_pending_timer: Timer | None = None   # the caller's ACK of a re-INVITE answer is not sent yet
        self._answer_timer: Timer | None = None        # bounds the caller's answer to `in_flight`

    # ------------------------------------------------------------------ re-INVITEs of the caller
    def reinvite_caller(self, offer: SdpBody, owner: object, on_answer: Callable[[SdpBody | None], None],
                        on_failure: Callable[[int | None, str], None]) -> None:
        self.queue.append(CallerReinvite(offer=offer, owner=owner, on_answer=on_answer, on_failure=on_failure))
        self.run_next()

    def run_next(self) -> None:
        """Send the next queued re-INVITE if nothing holds the caller's dialog (called after every
        event of the call's legs)."""
        call = self.call
        if (not self.queue or call.ended or self.in_flight is not None
                or self._glare_timer is not None or self._ack_pending_timer is not None
                or self.relay is not None or not call.caller_confirmed
                or not dialog.is_connected(call.caller)):
            return
        op = self.queue.pop(0)
        op.attempts += 1
        self.in_flight = op
        self._answer_timer = Timeout(call.guarded(self._reinvite_timed_out, op), CALLER_REINVITE_TIMEOUT_S)
        # may answer synchronously (same SDP as before): in_flight is set first
        sip_events.offer(call.caller, op.offer)

    def caller_answered(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        """The caller's 2xx to a re-INVITE: ours, or the one of a relayed offer."""
        cancel_timers(self, "_answer_timer")
        self._hold_until_acked()
        if self.in_flight is not None:
            op, self.in_flight = self.in_flight, None
            op.on_answer(body)
        elif self.relay is not None and self.relay.target is ua:
            self.relay_answered(code, reason, body)

    def caller_refused(self, ua: SipUA, code: int, reason: str) -> bool:
        """The caller's error response to a re-INVITE; False if there was none outstanding (then
        the failure is the caller's leg's own)."""
        cancel_timers(self, "_answer_timer")
        self._hold_until_acked()
        if self.in_flight is not None:
            self._reinvite_failed(code, reason)
            return True
        if self.relay is not None and self.relay.target is ua:
            self.relay_failed(code, reason)
            return True
        return False

    def _hold_until_acked(self) -> None:
        call = self.call
        if call.caller_answered and self._ack_pending_timer is None:
            # A final response to a re-INVITE we sent: sippy's transaction manager sends its ACK
            # only after this callback returns, so a queued re-INVITE sent from here would reach the
            # caller before that ACK (a UA may take it for a new transaction inside the old one;
            # SIPp aborts the call). The queue moves on at the reactor's next turn.
            self._ack_pending_timer = Timeout(call.guarded(self._after_caller_ack), 0)

    def _reinvite_timed_out(self, op: CallerReinvite) -> None:
        self._answer_timer = None
        if self.in_flight is op and not self.call.ended:
            # the caller neither answered nor refused: the leg waiting for it (an agent that
            # answered) must not wait for sippy's 32 s
            self.call.caller_failed("caller_reinvite_timeout")

    def _after_caller_ack(self) -> None:
        self._ack_pending_timer = None
        self.run_next()

    def _reinvite_failed(self, code: int, reason: str) -> None:
        op, self.in_flight = self.in_flight, None
        assert op is not None
        if code == 491 and op.attempts < GLARE_MAX_ATTEMPTS:
            delay = random.uniform(*GLARE_RETRY_S)
            log.info("call.reinvite_glare", retry_in_s=round(delay, 2))
            self._glare_timer = Timeout(self.call.guarded(self._retry_after_glare, op), delay)
            return
        op.on_failure(sip_events.int_code(code), str(reason))

    def _retry_after_glare(self, op: CallerReinvite) -> None:
        self._glare_timer = None
        call = self.call
        if any(leg is op.owner for leg in (call.media_pending, call.agent)):
            self.queue.insert(0, op)
        self.run_next()

    def forget(self, owner: object) -> None:
        """Drop the queued re-INVITEs of a leg that went away."""
        self.queue = [op for op in self.queue if op.owner is not owner]

    def queued_for(self, owner: object) -> bool:
        return any(op.owner is owner for op in self.queue)

    def stop(self) -> None:
        """The call ends: no more re-INVITEs."""
        cancel_timers(self, "_glare_timer", "_ack_pending_timer", "_answer_timer")
        self.queue.clear()

    # ------------------------------------------------------------------ in-dialog offers
    def peer_of(self, ua: SipUA) -> SipUA | None:
        """The UA an offer or INFO from `ua` goes to, or None."""
        call = self.call
        agent = call.agent
        if ua is call.caller:
            if agent is not None and agent.phase is Phase.TALKING:
                return agent.ua
            if call.media is not None:
                return call.media.ua
            return None
        if agent is not None and agent.whisper is not None and agent.phase is Phase.WHISPER:
            # the agent and its flow-id message are a session of their own
            if ua is agent.ua:
                return agent.whisper.ua
            if ua is agent.whisper.ua:
                return agent.ua
        if agent is not None and ua is agent.ua and agent.phase is not Phase.TALKING:
            return None
        return call.caller if call.caller_answered else None

    def relay_offer(self, source: SipUA, body: SdpBody | None) -> None:
        """Pass a re-INVITE/UPDATE offer to the other side (hold/resume); its answer comes back."""
        target = self.peer_of(source)
        if target is None:
            # nobody to ask (e.g. the media leg just ended): keep the session as it is
            sip_events.answer(source, dialog.local_sdp(source))
            return
        busy = (self.relay is not None or not dialog.is_connected(target)
                or (target is self.call.caller and self.in_flight is not None))
        if busy or body is None:
            sip_events.refuse(source, 491, "Request Pending")
            return
        self.relay = RelayedOffer(source=source, target=target)
        log.info("call.offer_relayed", direction="from_caller" if source is self.call.caller else "to_caller")
        sip_events.offer(target, body)

    def is_relay_answer(self, ua: SipUA) -> bool:
        """A final response from `ua` answers the offer relayed to it (not a hang-up)."""
        return self.relay is not None and self.relay.target is ua and dialog.is_connected(ua)

    def relay_answered(self, code: int, reason: str, body: SdpBody | None) -> None:
        relay, self.relay = self.relay, None
        assert relay is not None
        sip_events.answer(relay.source, body, code, reason)
        checkpoint(self.call)

    def relay_failed(self, code: int, reason: str) -> None:
        relay, self.relay = self.relay, None
        assert relay is not None
        sip_events.refuse(relay.source, code, reason)

    def abort_relay_involving(self, ua: SipUA | None) -> None:
        relay = self.relay
        if relay is None or (relay.source is not ua and relay.target is not ua):
            return
        self.relay = None
        if relay.target is ua and relay.source is not None:
            sip_events.refuse(relay.source, 487, "Request Terminated")


class RelayingLeg(LegEvents):
    """The events of a leg in a session with a peer (caller and agent, agent and its message,
    caller and media): its answer to an offer relayed to it goes back to the offer's source, its
    own offers are relayed, and a failure that is no such answer, a 3xx or a BYE end it
    (`on_hangup`, which each such leg says)."""

    __slots__ = ("offers",)

    def __init__(self, offers: CallerOffers) -> None:
        self.offers = offers

    def on_answer(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        if self.offers.is_relay_answer(ua):
            self.offers.relay_answered(code, reason, body)

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        if self.offers.is_relay_answer(ua):
            self.offers.relay_failed(code, reason)
        else:
            self.on_hangup(ua)

    def on_redirect(self, ua: SipUA, code: int, reason: str) -> None:
        self.on_hangup(ua)

    def on_reoffer(self, ua: SipUA, offer: SdpBody | None) -> None:
        self.offers.relay_offer(ua, offer)
