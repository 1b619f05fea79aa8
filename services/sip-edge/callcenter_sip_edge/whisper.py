"""The flow-id message ("whisper"): what an agent hears once it answers, before it meets the caller.

Reads: the events of the message's leg and of the agent leg while it hears the message or is
re-INVITEd after it (phases WHISPER_SETUP, WHISPER, REBRIDGING). Writes: the INVITE to the message's
media server with the agent's offer, the agent's ACK with that server's answer, the agent's
re-INVITE without SDP once the message has ended (`dialog.reinvite_without_offer`), and hands the
agent's new offer to `AgentLegs.bridge`.

A message that cannot be played is skipped (the agent is connected with its first offer); an
agent that hangs up meanwhile is reported `hung_up`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import structlog
from sippy.Time.Timeout import Timeout

from callcenter_sip_edge import sip_events
from callcenter_sip_edge.confirmed import checkpoint
from callcenter_sip_edge.legs import MEDIA_SETUP_TIMEOUT_S, AgentLeg, MediaLeg, Phase, SdpBody, SipUA, parse_target_uri
from callcenter_sip_edge.offers import GLARE_MAX_ATTEMPTS, GLARE_RETRY_OWN_S, RelayingLeg
from callcenter_sip_edge.sip_events import LegEvents
from callcenter_sip_edge.sippy import dialog

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

log = structlog.get_logger(__name__)

# after the flow-id message, how often and how long to wait for the agent's dialog to be idle
# (e.g. a relayed re-INVITE still open) before it is re-INVITEd
AGENT_IDLE_RETRY_S = 0.2
AGENT_IDLE_MAX_ATTEMPTS = 50


class FlowIdMessage(LegEvents):
    """The message leg of the call's agent (`call.agent.whisper`) and the agent around it."""

    __slots__ = (
        "_message_playing",
        "_message_setup",
        "agent_answered",
        "agent_hearing",
        "agent_rebridging",
        "call",
    )

    def __init__(self, call: Call) -> None:
        self.call = call
        self._message_setup = _MessageSetup(self)
        self._message_playing = _MessagePlaying(self)
        # the agent leg's handlers in the phases of the message (see AgentLegs)
        self.agent_answered = _AgentAnswered(self)
        self.agent_hearing = _AgentHearing(self)
        self.agent_rebridging = _AgentRebridging(self)

    def current(self, ua: SipUA) -> LegEvents | None:
        """The handler of an event of the message's leg (`FlowIdMessage` is that leg's events)."""
        leg = self.call.agent
        if leg is None or leg.whisper is None or leg.whisper.ua is not ua:
            return None
        if leg.phase is Phase.WHISPER_SETUP:
            return self._message_setup
        return self._message_playing if leg.phase is Phase.WHISPER else None

    def agent_leg(self) -> AgentLeg:
        """`call.agent`, which exists whenever a handler of this room gets an event."""
        leg = self.call.agent
        assert leg is not None
        return leg

    def start(self, leg: AgentLeg, offer: SdpBody) -> None:
        """The agent answered with `offer` (its 200's ACK is held): INVITE the message with it."""
        call = self.call
        leg.phase = Phase.WHISPER_SETUP
        leg.whispered = True
        leg.agent_offer = offer
        uri = leg.whisper_uri or ""
        target = parse_target_uri(uri)
        if target is None:
            self.failed(leg, None, "bad_uri")
            return
        wleg = MediaLeg(ua=None, uri=uri, purpose="whisper", early_offer=True)
        leg.whisper = wleg
        wleg.ua = call.invite(target, self, offer=offer, calling_name=call.info.caller_display,
                              expire_time=MEDIA_SETUP_TIMEOUT_S)
        if wleg.ua is None:
            leg.whisper = None
            self.failed(leg, None, "unreachable")
            return
        log.info("call.whisper_inviting", offer_id=leg.offer_id, uri=uri)

    def failed(self, leg: AgentLeg, code: int | None, reason: str, leg_gone: bool = False) -> None:
        """The message could not be played: connect caller and agent without it."""
        wleg, leg.whisper = leg.whisper, None
        if wleg is not None and not leg_gone:
            dialog.hang_up(wleg.ua)
        elif wleg is not None and wleg.ua is not None:
            wleg.ua.event_cb = None
        log.warning("call.whisper_failed", offer_id=leg.offer_id, uri=leg.whisper_uri, code=code, reason=reason)
        offer, leg.agent_offer = leg.agent_offer, None
        assert offer is not None   # kept by start() for as long as the message is set up
        self.call.agent_legs.bridge(leg, offer)

    def ended(self, leg: AgentLeg, ua: SipUA) -> None:
        """The message's server hung up: the message is over, ask the agent for a new offer."""
        self.call.offers.abort_relay_involving(ua)
        leg.whisper = None
        ua.event_cb = None
        log.info("call.whisper_ended", offer_id=leg.offer_id)
        leg.phase = Phase.REBRIDGING
        self.request_agent_offer(leg)

    def request_agent_offer(self, leg: AgentLeg) -> None:
        """After the message: re-INVITE the agent without SDP; its offer goes to the caller."""
        call = self.call
        leg.retry_timer = None
        if call.ended or call.agent is not leg or leg.phase is not Phase.REBRIDGING:
            return
        if not dialog.reinvite_without_offer(leg.ua):
            # an offer/answer exchange on the agent's dialog is still open (e.g. a relayed re-INVITE)
            leg.retries += 1
            if leg.retries > AGENT_IDLE_MAX_ATTEMPTS:
                call.agent_legs.fail(leg, "rejected", None)
                return
            leg.retry_timer = Timeout(call.guarded(self.request_agent_offer, leg), AGENT_IDLE_RETRY_S)
            return
        leg.offer_requested = True
        log.info("call.agent_offer_requested", offer_id=leg.offer_id)

    def agent_hung_up(self, ua: SipUA) -> None:
        """A failure, 3xx or BYE on the agent's leg before it met the caller: `hung_up` (the caller
        stays on its media), unless the dialog is still up (it answered an offer relayed before)."""
        if dialog.dialog_up(ua):
            return
        self.call.offers.abort_relay_involving(ua)
        self.call.agent_legs.fail(self.agent_leg(), "hung_up", None, leg_gone=True)

    def drop(self, leg: AgentLeg) -> None:
        """Hang up the agent's message leg, if any."""
        wleg, leg.whisper = leg.whisper, None
        if wleg is not None:
            self.call.offers.abort_relay_involving(wleg.ua)
            dialog.hang_up(wleg.ua)


class _MessageSetup(LegEvents):
    """The message's leg in WHISPER_SETUP: INVITEd with the agent's offer, not answered yet."""

    __slots__ = ("message",)

    def __init__(self, message: FlowIdMessage) -> None:
        self.message = message

    def on_answer(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        leg = self.message.agent_leg()
        if body is None:
            self.message.failed(leg, sip_events.int_code(code), "no_sdp")
            return
        leg.phase = Phase.WHISPER
        leg.agent_offer = None
        # the agent's ACK carries the message's answer: the agent hears the message
        assert leg.ua is not None
        sip_events.answer(leg.ua, body)
        checkpoint(self.message.call)   # both INVITEs are answered: none is left to CANCEL after a restart
        log.info("call.whisper_playing", offer_id=leg.offer_id)

    def on_offer(self, ua: SipUA, offer: SdpBody | None) -> None:
        self.message.failed(self.message.agent_leg(), None, "no_sdp")

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        self.message.failed(self.message.agent_leg(), sip_events.int_code(code), str(reason), leg_gone=True)

    def on_redirect(self, ua: SipUA, code: int, reason: str) -> None:
        self.message.failed(self.message.agent_leg(), sip_events.int_code(code), str(reason), leg_gone=True)

    def on_hangup(self, ua: SipUA) -> None:
        self.message.failed(self.message.agent_leg(), None, "timeout", leg_gone=True)


class _InWhisper(RelayingLeg):
    """A leg of the session of the agent and its message (phase WHISPER)."""

    __slots__ = ("message",)

    def __init__(self, message: FlowIdMessage) -> None:
        super().__init__(message.call.offers)
        self.message = message


class _MessagePlaying(_InWhisper):
    """The message's leg in WHISPER: the agent hears it; offers pass between the two."""

    __slots__ = ()

    def on_hangup(self, ua: SipUA) -> None:
        self.message.ended(self.message.agent_leg(), ua)


class _AgentAnswered(LegEvents):
    """The agent leg in WHISPER_SETUP (it answered, its message is being set up) and, through
    `_AgentRebridging`, in REBRIDGING: offers wait (491), a hang-up is `hung_up`."""

    __slots__ = ("message",)

    def __init__(self, message: FlowIdMessage) -> None:
        self.message = message

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        self.message.agent_hung_up(ua)

    def on_redirect(self, ua: SipUA, code: int, reason: str) -> None:
        self.message.agent_hung_up(ua)

    def on_hangup(self, ua: SipUA) -> None:
        self.message.agent_hung_up(ua)

    def on_reoffer(self, ua: SipUA, offer: SdpBody | None) -> None:
        sip_events.refuse(ua, 491, "Request Pending")


class _AgentHearing(_InWhisper):
    """The agent leg in WHISPER: it hears the message; offers pass between the two."""

    __slots__ = ()

    def on_hangup(self, ua: SipUA) -> None:
        self.message.agent_hung_up(ua)


class _AgentRebridging(_AgentAnswered):
    """The agent leg in REBRIDGING: re-INVITEd without SDP after the message, its offer awaited."""

    __slots__ = ()

    def on_answer(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        leg = self.message.agent_leg()
        if not leg.offer_requested:
            return
        leg.offer_requested = False
        if body is None:
            self.message.call.agent_legs.fail(leg, "no_sdp", sip_events.int_code(code))
            return
        self.message.call.agent_legs.bridge(leg, body)

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        leg = self.message.agent_leg()
        if not leg.offer_requested:
            self.message.agent_hung_up(ua)
            return
        leg.offer_requested = False
        status = sip_events.int_code(code)
        call = self.message.call
        if status == 491 and leg.retries < GLARE_MAX_ATTEMPTS:
            leg.retries += 1
            delay = random.uniform(*GLARE_RETRY_OWN_S)
            log.info("call.agent_reinvite_glare", retry_in_s=round(delay, 2))
            leg.retry_timer = Timeout(call.guarded(self.message.request_agent_offer, leg), delay)
            return
        if status in (408, 481):
            # sippy ended the dialog (BYE sent)
            call.agent_legs.fail(leg, "hung_up", status, leg_gone=True)
        else:
            call.agent_legs.fail(leg, "rejected", status)
