"""One call: its state, the commands the dispatcher sends it, the caller's leg, and its end.

Reads: the commands `CallRouter` hands it, the events of the caller's UA (through `sip_events`),
and the outcomes its rooms report back. Writes: facts through the router's `emit`, and SIP through
its rooms: `media` (media legs), `agent` (the agent leg), `forks` (ring-all), `whisper` (the
flow-id message), `offers` (the caller's re-INVITE queue and relayed offers).

Runs in sippy's turns only (third-party call control, RFC 3725). Shape of a call:
    caller ──(UAS leg)── edge ──(UAC leg)── media server (welcome, queue, dissuading)
                              └─(UAC leg)── agent ──(UAC leg)── flow-id message ("whisper")
The caller's offer goes to the first leg that answers it (early offer). Once the caller is
answered, a new leg is invited without SDP (late offer, RFC 3725 flow I); its 200 carries an
offer that goes to the caller in a re-INVITE, and the caller's answer goes in the ACK.

Every event of a leg and every timer of the call runs inside `event_cb`/`guarded`: `call_id` is
bound to the log context there, the next queued re-INVITE of the caller is tried after each event,
and an exception ends the call (500) instead of unwinding into sippy's state machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import structlog
from sippy.Time.Timeout import Timeout
from structlog.contextvars import bind_contextvars, reset_contextvars

from callcenter.contract.commands import Adopt, CancelRing, Command, Hangup, Media, Reject, Ring, RingAll
from callcenter_sip_edge import sip_events
from callcenter_sip_edge.agent import AgentLegs
from callcenter_sip_edge.confirmed import SETTLING_REPORTS, caller_answered, checkpoint
from callcenter_sip_edge.forks import Forks
from callcenter_sip_edge.legs import (
    CALLER_ACK_TIMEOUT_S,
    NO_REPLY_TIMEOUT_S,
    AgentLeg,
    CallerInfo,
    MediaLeg,
    SdpBody,
    SipUA,
    Timer,
    cancel_timers,
)
from callcenter_sip_edge.media import MediaLegs
from callcenter_sip_edge.offers import CallerOffers
from callcenter_sip_edge.session_timer import SessionTimers
from callcenter_sip_edge.sip_events import LegEvents, deliver
from callcenter_sip_edge.sippy import dialog
from callcenter_sip_edge.sippy.memory import drop_answer_template
from callcenter_sip_edge.whisper import FlowIdMessage

if TYPE_CHECKING:
    from callcenter_sip_edge.router import CallRouter

log = structlog.get_logger(__name__)

HANGUP_UNANSWERED = (480, "Temporarily Unavailable")
# overflow: the SIP URI a call is bridged to after its flow's max_wait_s (fire_timers.lua)
MEDIA_PURPOSES = frozenset({"welcome", "queue", "dissuading", "overflow"})
_REASON_PHRASE = re.compile(r"[\x00-\x1f\x7f]")
_STANDARD_REASON_PHRASES = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    410: "Gone", 480: "Temporarily Unavailable", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 500: "Server Internal Error", 503: "Service Unavailable",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
}


class Call:
    """One call: the caller leg, the current/pending media legs, the agent leg, ring-all forks."""

    def __init__(self, router: CallRouter, call_id: str, info: CallerInfo) -> None:
        self.router = router
        self.call_id = call_id
        self.info = info
        self.caller: Any = None                        # the UAS leg; the router sets it (its callback needs the call)
        self.caller_offer: SdpBody | None = None
        self.caller_answered = False                  # our 200 went to the caller (or an adopted dialog)
        self._awaiting_ack = False                    # ... and its ACK has not come yet
        self._on_confirmed: Callable[[], None] | None = None
        self._ack_timer: Timer | None = None
        self.caller_ack_body: SdpBody | None = None   # the body of the caller's ACK of our 200 (late offer)
        self.media: MediaLeg | None = None            # the leg the caller hears now
        self.media_pending: MediaLeg | None = None    # a media leg being set up
        self.agent: AgentLeg | None = None
        self.ended = False
        # the rooms, each with its share of the call's legs and timers
        self.offers = CallerOffers(self)
        self.flow_message = FlowIdMessage(self)
        self.agent_legs = AgentLegs(self)
        self.media_legs = MediaLegs(self)
        self.forks = Forks(self)
        self.caller_events = _CallerLeg(self)
        self.session_timers = SessionTimers(self)

    # ------------------------------------------------------------------ commands (COMMAND_HANDLERS)
    def media_command(self, command: Media) -> None:
        if command.purpose not in MEDIA_PURPOSES:
            self.refuse("media", "bad_purpose", purpose=command.purpose)
            return
        self.media_legs.start(command.uri, command.purpose)

    def ring_command(self, command: Ring) -> None:
        self.agent_legs.ring(command.offer_id, command.agent_id, command.uri, command.timeout_s,
                             command.caller_display, command.whisper_uri)

    def ring_all_command(self, command: RingAll) -> None:
        self.forks.start(command.offer_id, command.targets, command.timeout_s, command.caller_display)

    def cancel_ring_command(self, command: CancelRing) -> None:
        if not self.forks.cancel(command.offer_id):
            self.agent_legs.cancel(command.offer_id)

    def reject_command(self, command: Reject) -> None:
        code, reason = command.code, command.reason
        if not 400 <= int(code) <= 699:
            log.warning("call.reject_code_invalid", code=code)
            code = 500
        phrase = _STANDARD_REASON_PHRASES.get(int(code)) or _reason_phrase(reason)
        self.end(by="edge", reason=reason, caller_code=(int(code), phrase))

    def hangup_command(self, command: Hangup) -> None:
        self.hang_up(command.reason)

    def adopt_command(self, command: Adopt) -> None:
        # a handed-over call is adopted by the service (service._adopt) before it is here; one this
        # edge carries already changes nothing
        self.refuse("adopt", from_edge=command.from_edge)

    def hang_up(self, reason: str) -> None:
        self.end(by="edge", reason=reason, caller_code=HANGUP_UNANSWERED)

    # ------------------------------------------------------------------ caller leg
    @property
    def caller_confirmed(self) -> bool:
        """The caller's dialog is confirmed (our 200 ACKed): the caller is on our media."""
        return self.caller_answered and not self._awaiting_ack

    def answer_caller(self, body: SdpBody | None, then: Callable[[], None]) -> None:
        """Send the caller our 200 with `body`; `then` runs when its ACK confirms the dialog (only
        then is the caller on our media, and only then does the dispatcher hear of it). Without an
        ACK within CALLER_ACK_TIMEOUT_S the call ends (`caller_no_ack`): a caller that never ACKs
        held the leg that answered it (an agent, with the caller's own offer) for sippy's 32 s."""
        sip_events.answer(self.caller, body)
        self.caller_answered = True
        caller_answered(self)
        self._awaiting_ack = True
        self._on_confirmed = then
        if not dialog.on_ack_of_answer(self.caller, self.guarded(self.caller_acked)):
            log.warning("call.caller_ack_untracked")   # not expected: take the dialog as confirmed
            self.caller_acked()
            return
        self._ack_timer = Timeout(self.guarded(self._caller_ack_timed_out), CALLER_ACK_TIMEOUT_S)

    def caller_acked(self, body: SdpBody | None = None) -> None:
        """The caller's ACK of our 200: its dialog is confirmed; `body` is what the ACK carried."""
        if not self._awaiting_ack or self.ended:
            return
        self.caller_ack_body = body
        self._awaiting_ack = False
        drop_answer_template(self.caller)
        cancel_timers(self, "_ack_timer")
        self.session_timers.caller_confirmed()
        then, self._on_confirmed = self._on_confirmed, None
        if then is not None:
            then()
        self.offers.run_next()   # a re-INVITE of the caller waits for its confirmed dialog

    def _caller_ack_timed_out(self) -> None:
        self._ack_timer = None
        if not self.ended and not self.caller_confirmed:
            self.caller_failed("caller_no_ack")

    def caller_failed(self, reason: str) -> None:
        """The caller did not do its part of the connect (no ACK, no answer to our re-INVITE): end
        the call, saying so. The dispatcher frees an agent that was offered it without penalty."""
        log.warning("call.caller_failed", reason=reason)
        self.end(by="edge", reason=reason)

    # ------------------------------------------------------------------ teardown
    def end(self, *, by: str, reason: str, caller_code: tuple[int, str] | None = None,
            agent_gone: bool = False) -> None:
        """Tear every leg down and report `ended` once; the call is forgotten afterwards."""
        if self.ended:
            return
        self.ended = True
        cancel_timers(self, "_ack_timer")
        self._on_confirmed = None
        self.session_timers.stop()
        self.offers.stop()
        for leg in (self.media_pending, self.media):
            if leg is not None:
                dialog.hang_up(leg.ua)
        self.forks.cancel_all()
        agent = self.agent
        if agent is not None:
            agent.stop_timers()
            self.flow_message.drop(agent)
            if not agent_gone:
                dialog.hang_up(agent.ua)
            elif agent.ua is not None:
                agent.ua.event_cb = None
        code: int | None = None
        if by != "caller":
            if self.caller_answered:
                dialog.hang_up(self.caller)
            else:
                code, phrase = caller_code or HANGUP_UNANSWERED
                self._fail_caller(code, phrase)
        self.router.forget(self.call_id)
        log.info("call.ended", by=by, reason=reason, code=code)
        self.emit("call_ended", by=by, reason=reason, code=code)

    def _fail_caller(self, code: int, phrase: str) -> None:
        try:
            sip_events.refuse(self.caller, code, phrase)
        except Exception:
            log.exception("call.caller_reject_failed", code=code)
        self.caller.event_cb = None

    # ------------------------------------------------------------------ plumbing for the rooms
    def invite(self, target: Any, events: LegEvents, *, offer: SdpBody | None, calling_name: str | None,
               expire_time: float | None = None, agent: bool = False) -> SipUA | None:
        """Create a UAC leg whose events go to `events` and send its INVITE (with `offer`, or
        without SDP for a late offer); None if it could not be sent. An `agent` leg gets session
        timers (session_timer.py)."""
        timers = self.session_timers
        ua = dialog.invite(self.router.sip_config, target, self.event_cb(events),
                           caller_user=self.info.caller_user, offer=offer, calling_name=calling_name,
                           no_reply_time=NO_REPLY_TIMEOUT_S, expire_time=expire_time,
                           extra_headers=timers.invite_headers() if agent else None,
                           prepare=timers.hook_agent if agent else None)
        if ua is not None:
            checkpoint(self, sent=ua)   # a restarted edge CANCELs it (adoption.py)
        return cast("SipUA | None", ua)

    def event_cb(self, events: LegEvents) -> Callable[[Any, Any], None]:
        """The sippy event callback of a leg: `events.current(ua)` gets the event by name."""
        return _LegCallback(self, events)

    def guarded(self, handler: Callable[..., None], *bound: Any) -> Callable[..., None]:
        """Wrap a timer callback: an exception in our logic must not unwind into sippy's reactor."""
        return _Guarded(self, handler, bound)

    def fail_internally(self, handler: str) -> None:
        """Our own logic raised in `handler` (inside its `except`): end the call with a 500."""
        log.exception("call.handler_failed", handler=handler)
        try:
            self.end(by="edge", reason="internal_error", caller_code=(500, "Server Internal Error"))
        except Exception:
            log.exception("call.teardown_failed")

    def refuse(self, command: str, reason: str = "wrong_state", *, offer_id: str | None = None,
               purpose: str | None = None, **details: Any) -> None:
        """A command of this call is not carried out: say so (`command_refused`), so the dispatcher
        acts at once instead of waiting for a lease; `details` only go to the log."""
        refuse_command(self.router.emit, self.call_id, command, reason, offer_id, purpose, **details)

    def emit(self, kind: str, **data: Any) -> None:
        if kind == "agent_answered":
            self.session_timers.agent_connected()
        self.router.emit(kind, self.call_id, data)
        if kind in SETTLING_REPORTS:
            checkpoint(self)   # a leg stopped setting up: its INVITE leaves the checkpoint


class _LegCallback:
    """`Call.event_cb`: a slotted object rather than a closure (~230 bytes less per leg, a few per call up)."""

    __slots__ = ("call", "events")

    def __init__(self, call: Call, events: LegEvents) -> None:
        self.call = call
        self.events = events

    def __call__(self, event: Any, ua: SipUA) -> None:
        call = self.call
        if call.ended:
            return
        tokens = bind_contextvars(call_id=call.call_id)
        try:
            handler = self.events.current(ua)
            if handler is not None:
                deliver(handler, event, ua)
                call.offers.run_next()
        except Exception:
            call.fail_internally(type(self.events).__name__)
        finally:
            reset_contextvars(**tokens)


class _Guarded:
    """`Call.guarded`: a slotted object rather than a closure, as `_LegCallback`."""

    __slots__ = ("bound", "call", "handler")

    def __init__(self, call: Call, handler: Callable[..., None], bound: tuple[Any, ...]) -> None:
        self.call = call
        self.handler = handler
        self.bound = bound

    def __call__(self, *args: Any) -> None:
        tokens = bind_contextvars(call_id=self.call.call_id)
        try:
            self.handler(*self.bound, *args)
        except Exception:
            self.call.fail_internally(self.handler.__name__)
        finally:
            reset_contextvars(**tokens)


class _CallerLeg(LegEvents):
    """The caller's leg (the UAS): its INVITE, its answers to our re-INVITEs, its offers, its end."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def on_invite(self, ua: SipUA, offer: SdpBody | None) -> None:
        self.call.caller_offer = offer
        # the caller hears local ringback until a leg answers it
        sip_events.ring(self.call.caller)

    def on_answer(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        self.call.offers.caller_answered(ua, code, reason, body)

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        if not self.call.offers.caller_refused(ua, code, reason):
            self.on_hangup(ua)

    def on_redirect(self, ua: SipUA, code: int, reason: str) -> None:
        self.on_hangup(ua)

    def on_hangup(self, ua: SipUA) -> None:
        call = self.call
        call.end(by="caller", reason="bye" if call.caller_answered else "cancel")

    def on_reoffer(self, ua: SipUA, offer: SdpBody | None) -> None:
        self.call.offers.relay_offer(ua, offer)

    def on_info(self, ua: SipUA, info: object) -> None:
        peer = self.call.offers.peer_of(ua)
        if peer is not None:
            sip_events.pass_info(peer, info)


# The handler of each command class: `CallRouter.execute` finds the call and calls it from here.
# `Any`: each handler takes its own class, which a dict keyed by class cannot say to mypy.
COMMAND_HANDLERS: dict[type[Command], Callable[[Call, Any], None]] = {
    Media: Call.media_command,
    Ring: Call.ring_command,
    RingAll: Call.ring_all_command,
    CancelRing: Call.cancel_ring_command,
    Reject: Call.reject_command,
    Hangup: Call.hangup_command,
    Adopt: Call.adopt_command,
}


def refuse_command(emit: Callable[[str, str, dict[str, Any]], None], call_id: str, command: str, reason: str,
                   offer_id: str | None, purpose: str | None = None, **details: Any) -> None:
    """Log and report (`command_refused`) a command not carried out; `command` without `command.`,
    `purpose` the media purpose of a refused `command.media`."""
    log.warning("call.command_refused", call_id=call_id, command=command, reason=reason, offer_id=offer_id,
                purpose=purpose, **details)
    data: dict[str, Any] = {"command": f"command.{command}", "offer_id": offer_id, "reason": reason}
    if purpose is not None:
        data["purpose"] = purpose
    emit("command_refused", call_id, data)


def _reason_phrase(reason: str) -> str:
    phrase = _REASON_PHRASE.sub(" ", reason).strip()
    return phrase or "Rejected"
