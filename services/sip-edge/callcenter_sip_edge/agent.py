"""The call's agent leg: ringing one agent, connecting it to the caller, losing it.

Reads: `command.ring` and `command.cancel_ring` (through `Call`), the events of the agent leg's UA,
and the winner of a ring-all (`forks`). Writes: the INVITE to the agent, the caller's re-INVITE
to the agent's offer (through `CallerOffers`), BYE/CANCEL, and the facts `agent_answered` and
`agent_failed`.

The agent leg's events go to the handler of its `Phase`; the flow-id message phases are in
`whisper`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from sippy.Time.Timeout import Timeout

from callcenter_sip_edge import late_offer, sip_events
from callcenter_sip_edge.confirmed import checkpoint
from callcenter_sip_edge.legs import CANCELLABLE_PHASES, AgentLeg, Phase, SdpBody, SipUA, parse_target_uri
from callcenter_sip_edge.offers import RelayingLeg
from callcenter_sip_edge.sip_events import LegEvents
from callcenter_sip_edge.sippy import dialog

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

log = structlog.get_logger(__name__)


def agent_failure_reason(code: int | None) -> str:
    """Map the agent's final response code to the reason reported in `agent_failed`."""
    if code in (486, 600):
        return "busy"
    if code in (408, 430, 503) or code is None:   # 430: no live WebSocket flow to the agent
        return "unreachable"
    return "rejected"


class AgentLegs(LegEvents):
    """`call.agent`: the one agent leg of the call, from the INVITE to the end of the call."""

    __slots__ = ("_by_phase", "call", "ringing")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.ringing = _Ringing(self)
        message = call.flow_message
        self._by_phase: dict[Phase, LegEvents] = {
            Phase.RINGING: self.ringing, Phase.WHISPER_SETUP: message.agent_answered,
            Phase.WHISPER: message.agent_hearing, Phase.REBRIDGING: message.agent_rebridging,
            Phase.BRIDGING: _Bridging(self), Phase.TALKING: _Talking(self),
        }

    def current(self, ua: SipUA) -> LegEvents | None:
        leg = self.call.agent
        if leg is None or leg.ua is not ua:
            return None
        return self._by_phase[leg.phase]

    def leg(self) -> AgentLeg:
        """`call.agent`, which exists whenever a handler of one of its phases gets an event."""
        leg = self.call.agent
        assert leg is not None
        return leg

    # ------------------------------------------------------------------ commands
    def ring(self, offer_id: str, agent_id: str, uri: str, timeout_s: float,
             caller_display: str | None, whisper_uri: str | None) -> None:
        call = self.call
        if call.agent is not None or bool(call.forks.legs) or (
            not call.caller_answered and call.media_pending is not None
        ):
            call.refuse("ring", offer_id=offer_id, agent_busy=call.agent is not None, forks=len(call.forks.legs))
            return
        target = parse_target_uri(uri)
        if target is None:
            call.emit("agent_failed", offer_id=offer_id, agent_id=agent_id, reason="unreachable", code=None)
            return
        early = not call.caller_answered
        if whisper_uri and early:
            # the agent would get the caller's offer and its answer would answer the caller: there is
            # no media to hold the caller on, nor an answer for the agent if the message failed
            log.info("call.whisper_skipped", offer_id=offer_id, reason="caller_not_answered")
            whisper_uri = None
        leg = AgentLeg(ua=None, uri=uri, offer_id=offer_id, agent_id=agent_id, early_offer=early,
                       whisper_uri=whisper_uri or None)
        call.agent = leg
        display = caller_display if caller_display is not None else call.info.caller_display
        leg.ua = call.invite(target, self, offer=call.caller_offer if early else None, calling_name=display,
                             agent=True)
        if leg.ua is None:
            call.agent = None
            call.emit("agent_failed", offer_id=offer_id, agent_id=agent_id, reason="unreachable", code=None)
            return
        leg.ring_timer = Timeout(call.guarded(self._ring_timed_out, leg), max(0.1, float(timeout_s)))
        log.info("call.agent_ringing", offer_id=offer_id, agent_id=agent_id, uri=uri, early_offer=early,
                 whisper_uri=leg.whisper_uri)

    def cancel(self, offer_id: str) -> None:
        """Take back the ringing agent (or one hearing its flow-id message): BYE/CANCEL, `cancelled`."""
        call = self.call
        leg = call.agent
        if leg is None or leg.offer_id != offer_id or leg.phase not in CANCELLABLE_PHASES:
            call.refuse("cancel_ring", offer_id=offer_id, agent_phase=leg.phase.value if leg else None)
            return
        self.drop(leg)
        call.emit("agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id, reason="cancelled", code=None)

    # ------------------------------------------------------------------ connecting
    def bridge(self, leg: AgentLeg, offer: SdpBody) -> None:
        """Re-INVITE the caller with the agent's offer; the caller's answer goes in the agent's ACK."""
        leg.phase = Phase.BRIDGING
        self.call.offers.reinvite_caller(offer, leg, lambda answer: self._bridged(leg, answer),
                                         lambda code, reason: self._bridge_failed(leg, code, reason))

    def _bridged(self, leg: AgentLeg, answer: SdpBody | None) -> None:
        call = self.call
        if call.agent is not leg:
            return
        assert leg.ua is not None
        sip_events.answer(leg.ua, answer)
        leg.phase = Phase.TALKING
        call.media_legs.drop_all()
        log.info("call.agent_connected", offer_id=leg.offer_id, early_offer=False, whispered=leg.whispered)
        call.emit("agent_answered", offer_id=leg.offer_id, agent_id=leg.agent_id)
        checkpoint(call)

    def _bridge_failed(self, leg: AgentLeg, code: int | None, reason: str) -> None:
        if self.call.agent is not leg:
            return
        log.info("call.agent_bridge_failed", code=code, reason=reason)
        self.fail(leg, "rejected", code)

    def lost_while_bridging(self, leg: AgentLeg) -> None:
        call = self.call
        in_flight = call.offers.in_flight
        if call.offers.queued_for(leg) or (in_flight is None or in_flight.owner is not leg):
            # the caller was not moved yet: it stays on its media leg (an agent that answered and
            # heard its flow-id message hung up; one without has never been reported otherwise)
            self.fail(leg, "hung_up" if leg.whispered else "rejected", None, leg_gone=True)
            return
        # the caller is being re-INVITEd to the agent's SDP right now; no way back to the media
        call.end(by="agent", reason="bye", agent_gone=True)

    # ------------------------------------------------------------------ losing the agent
    def _ring_timed_out(self, leg: AgentLeg) -> None:
        leg.ring_timer = None
        call = self.call
        if call.agent is leg and leg.phase is Phase.RINGING and not call.ended:
            # a phone that never sent any response is unreachable, not unanswered (a ring timeout
            # shorter than NO_REPLY_TIMEOUT_S fires first)
            self.fail(leg, "no_answer" if leg.got_provisional else "unreachable", None)

    def fail(self, leg: AgentLeg, reason: str, code: int | None, leg_gone: bool = False) -> None:
        """The agent is not connected: drop its leg (BYE unless `leg_gone`), report `agent_failed`."""
        call = self.call
        if call.agent is not leg:
            return
        if leg_gone:
            leg.stop_timers()
            call.offers.forget(leg)
            call.flow_message.drop(leg)
            call.agent = None
        else:
            self.drop(leg)
        log.info("call.agent_failed", offer_id=leg.offer_id, reason=reason, code=code)
        call.emit("agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id, reason=reason, code=code)

    def drop(self, leg: AgentLeg) -> None:
        call = self.call
        leg.stop_timers()
        call.offers.forget(leg)
        call.flow_message.drop(leg)
        call.agent = None
        dialog.hang_up(leg.ua)


class _AgentPhase(LegEvents):
    __slots__ = ("agents",)

    def __init__(self, agents: AgentLegs) -> None:
        self.agents = agents


class _Ringing(_AgentPhase):
    """RINGING: the agent's phone rings (or the ring-all leg that won has just answered)."""

    __slots__ = ()

    def on_ringing(self, ua: SipUA) -> None:
        leg = self.agents.leg()
        leg.got_provisional = True

    def on_answer(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        call = self.agents.call
        leg = self.agents.leg()
        leg.stop_timers()
        if not leg.early_offer or body is None:
            self.agents.fail(leg, "no_sdp", sip_events.int_code(code))
            return
        leg.phase = Phase.TALKING
        call.answer_caller(body, lambda: self._early_connected(leg))

    def _early_connected(self, leg: AgentLeg) -> None:
        # the caller ACKed the agent's answer: only now is the agent reported answered (a caller
        # that never ACKs ends the call as caller_no_ack, and the agent is not blamed)
        call = self.agents.call
        if call.agent is not leg:
            return
        log.info("call.agent_connected", offer_id=leg.offer_id, early_offer=True)
        call.emit("agent_answered", offer_id=leg.offer_id, agent_id=leg.agent_id)
        checkpoint(call)

    def on_offer(self, ua: SipUA, offer: SdpBody | None) -> None:
        call = self.agents.call
        leg = self.agents.leg()
        leg.stop_timers()
        if offer is None:
            self.agents.fail(leg, "no_sdp", 200)
            return
        if leg.early_offer:
            # the caller sent no offer and hears no media: the agent's offer goes in our 200 (late_offer.py)
            leg.phase = Phase.TALKING
            late_offer.answer_caller_with_offer(call, ua, offer, lambda: self._early_connected(leg))
            return
        if leg.whisper_uri is not None:
            call.flow_message.start(leg, offer)
            return
        self.agents.bridge(leg, offer)

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        leg = self.agents.leg()
        status = sip_events.int_code(code)
        self.agents.fail(leg, agent_failure_reason(status), status, leg_gone=True)

    on_redirect = on_failed

    def on_hangup(self, ua: SipUA) -> None:
        # sippy's no-reply timer fired (CANCEL already sent)
        leg = self.agents.leg()
        self.agents.fail(leg, "no_answer" if leg.got_provisional else "unreachable", None, leg_gone=True)


class _Bridging(_AgentPhase):
    """BRIDGING: the agent answered, the caller is being re-INVITEd to its offer."""

    __slots__ = ()

    def on_hangup(self, ua: SipUA) -> None:
        leg = self.agents.leg()
        self.agents.lost_while_bridging(leg)

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        self.on_hangup(ua)

    def on_redirect(self, ua: SipUA, code: int, reason: str) -> None:
        self.on_hangup(ua)


class _Talking(RelayingLeg):
    """TALKING: caller and agent are connected; offers and INFO pass between them."""

    __slots__ = ("agents",)

    def __init__(self, agents: AgentLegs) -> None:
        super().__init__(agents.call.offers)
        self.agents = agents

    def on_hangup(self, ua: SipUA) -> None:
        call = self.agents.call
        call.offers.abort_relay_involving(ua)
        call.end(by="agent", reason="bye", agent_gone=True)

    def on_info(self, ua: SipUA, info: object) -> None:
        sip_events.pass_info(self.agents.call.caller, info)
