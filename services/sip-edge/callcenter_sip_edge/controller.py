"""Third-party call control (RFC 3725) for one call, and the router that owns all calls.

Reads: sippy UA events (CCEvent*) of the four kinds of legs of a call — the caller (UAS), the
media server legs, the agent leg and the agent's flow-id message leg (UACs) — and the commands
`SipStack` forwards.
Writes: facts through the `emit` callback given to `CallRouter`, and SIP through sippy UAs.

Runs on the SIP thread only. This module imports sippy at import time, so `SipStack` imports it
from that thread (sippy's reactor binds to the importing thread).

Shape of a call:
    caller ──(UAS leg)── edge ──(UAC leg)── media server (welcome, queue, dissuading)
                              └─(UAC leg)── agent ──(UAC leg)── flow-id message ("whisper")
The caller's offer goes to the first leg that answers it (early offer). Once the caller is
answered, a new leg is invited without SDP (late offer, RFC 3725 flow I); its 200 carries an
offer that goes to the caller in a re-INVITE, and the caller's answer goes in the ACK. Only one
re-INVITE towards the caller runs at a time (`_CallerReinvite` queue, 491 back-off).

With a flow-id message, the answered agent's offer goes to the message's media server instead
(whose answer is in the agent's ACK) while the caller stays on its media. When that server hangs
up, the agent is re-INVITEd without SDP and its new offer goes the usual way to the caller.
Agent phases: ringing -> [whisper_setup -> whisper -> rebridging ->] bridging -> talking.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import structlog
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
from sippy.SipConf import SipConf
from sippy.SipGenericHF import SipGenericHF
from sippy.SipHeader import SipHeader
from sippy.SipLogger import SipLogger
from sippy.SipURL import SipURL
from sippy.Time.Timeout import Timeout
from sippy.UA import UA
from sippy.UaStateConnected import UaStateConnected

from callcenter_sip_edge.guard import SourceGuard
from callcenter_sip_edge.sdp import media_type_of
from callcenter_sip_edge.sip_stack import Fact
from callcenter_sip_edge.sippy_fixes import (
    CycleCollector,
    contact_without_display_name,
    make_transaction_manager_class,
    quotable_display_name,
    reinvite_without_offer,
)

log = structlog.get_logger(__name__)

# A leg that has not sent any response within this time is unreachable (sippy's own 408 comes
# only after 32 s of retransmissions).
NO_REPLY_TIMEOUT_S = 4.0
# A media server must answer within this time once it has sent a provisional response.
MEDIA_SETUP_TIMEOUT_S = 15.0
# RFC 3261 14.1: after a 491, retry after 2.1-4 s if we own the Call-ID, 0-2 s otherwise.
# The caller owns the caller leg's Call-ID.
GLARE_RETRY_S = (0.0, 2.0)
# ... and the edge owns the agent leg's Call-ID (the re-INVITE after the flow-id message)
GLARE_RETRY_OWN_S = (2.1, 4.0)
GLARE_MAX_ATTEMPTS = 5
# after the flow-id message, how often and how long to wait for the agent's dialog to be idle
# (e.g. a relayed re-INVITE still open) before it is re-INVITEd
AGENT_IDLE_RETRY_S = 0.2
AGENT_IDLE_MAX_ATTEMPTS = 50
DRAIN_RETRY_AFTER_S = 30
HANGUP_UNANSWERED = (480, "Temporarily Unavailable")
SHUTDOWN_FLUSH_S = 0.3
GC_TICK_S = 5.0

SIP_METHODS_ALLOWED = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
# RFC 3261 20.43: warn-code 304 with a pseudonym as warn-agent
MEDIA_NOT_AVAILABLE_WARNING = '304 callcenter "Media type not available (neither RTP nor MSRP)"'
_KNOWN_SIP_METHODS = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "PRACK",
                                "REFER", "NOTIFY", "SUBSCRIBE", "REGISTER", "MESSAGE", "PUBLISH"})
_REASON_PHRASE = re.compile(r"[\x00-\x1f\x7f]")
_STANDARD_REASON_PHRASES = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    410: "Gone", 480: "Temporarily Unavailable", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 500: "Server Internal Error", 503: "Service Unavailable",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
}

SdpBody = Any  # sippy.MsgBody.MsgBody
# an agent leg the dispatcher may still take back: the caller has not been moved to it
_CANCELLABLE_AGENT_PHASES = frozenset({"ringing", "whisper_setup", "whisper", "rebridging"})
FactEmitter = Callable[[str, str, dict[str, Any]], None]


def agent_failure_reason(code: int | None) -> str:
    """Map the agent's final response code to the reason reported in `agent_failed`."""
    if code in (486, 600):
        return "busy"
    if code in (408, 503) or code is None:
        return "unreachable"
    return "rejected"


class _TryWithRequestUri(CCEventTry):  # type: ignore[misc]
    """CCEventTry that sends the INVITE to the full target URI, URI parameters included.

    sippy builds the Request-URI as sip:<user>@<next hop> and drops URI parameters (e.g. the
    queue position `;cc_pos=3`); its onUacSetupComplete() hook runs before the INVITE is built.
    """

    request_uri: Any = None

    def onUacSetupComplete(self, uac: Any) -> None:
        if self.request_uri is not None:
            uac.rTarget = self.request_uri.getCopy()


@dataclass
class _MediaLeg:
    ua: Any
    uri: str
    purpose: str
    early_offer: bool          # carries the caller's offer (caller not answered yet)


@dataclass
class _AgentLeg:
    ua: Any
    uri: str
    offer_id: str
    agent_id: str
    early_offer: bool
    # ringing -> bridging (200 received, caller re-INVITE) -> talking; with a flow-id message
    # ringing -> whisper_setup (message INVITEd with the agent's offer) -> whisper (agent hears it)
    # -> rebridging (agent re-INVITEd without SDP) -> bridging -> talking
    phase: str = "ringing"
    got_provisional: bool = False
    ring_timer: Any = None
    whisper_uri: str | None = None     # the flow-id message to play once the agent answers
    whisper: _MediaLeg | None = None   # its leg (the agent is its only peer)
    whispered: bool = False            # the agent answered and a message was tried
    agent_offer: SdpBody = None        # the agent's answer-time offer, while the message is set up
    offer_requested: bool = False      # a re-INVITE without SDP to the agent is outstanding
    retry_timer: Any = None
    retries: int = 0


@dataclass
class _CallerReinvite:
    """A re-INVITE of the caller that the edge itself originates (moving the caller to a leg)."""

    offer: SdpBody
    owner: Any                 # the leg whose offer this is; dropped if that leg goes away
    on_answer: Callable[[SdpBody], None]
    on_failure: Callable[[int | None, str], None]
    attempts: int = 0


@dataclass
class _RelayedOffer:
    """A re-INVITE/UPDATE from one side of a bridged call, waiting for the other side's answer."""

    source: Any
    target: Any


@dataclass
class CallerInfo:
    flow: str
    caller_user: str
    caller_uri: str
    caller_display: str | None
    sip_call_id: str
    source: str
    priority: int | None = None
    media_type: str = "audio"


PRIORITY_HEADER = "x-cc-priority"
PRIORITY_URI_PARAM = "cc_priority"


def call_priority(req: Any) -> int | None:
    """The caller's priority (-100..100, higher is served sooner) from an `X-CC-Priority` header
    or a `;cc_priority=` Request-URI parameter, as set by the carrier or an upstream proxy."""
    raw: str | None = None
    if req.countHFs(PRIORITY_HEADER) > 0:
        raw = str(req.getHFBody(PRIORITY_HEADER)).strip()
    else:
        for param in getattr(req.getRURI(), "other", []):
            name, _, value = str(param).partition("=")
            if name.lower() == PRIORITY_URI_PARAM:
                raw = value
    if raw is None:
        return None
    try:
        return max(-100, min(100, int(raw)))
    except ValueError:
        log.info("call.bad_priority", value=raw[:32])
        return None


@dataclass
class CallController:
    """One call: the caller leg, the current/pending media legs, the agent leg."""

    router: CallRouter
    call_id: str
    info: CallerInfo
    caller: Any = None
    caller_offer: SdpBody = None
    caller_answered: bool = False
    media: _MediaLeg | None = None            # the leg the caller hears now
    media_pending: _MediaLeg | None = None    # a media leg being set up
    agent: _AgentLeg | None = None
    forks: list[_AgentLeg] = field(default_factory=list)  # ring-all legs still ringing, no winner yet
    _fork_timer: Any = None
    ended: bool = False
    _reinvites: deque[_CallerReinvite] = field(default_factory=deque)
    _reinvite_in_flight: _CallerReinvite | None = None
    _glare_timer: Any = None
    _relay: _RelayedOffer | None = None
    _ack_pending_timer: Any = None   # the caller's ACK of a re-INVITE answer is not sent yet

    # ------------------------------------------------------------------ commands
    def media_command(self, uri: str, purpose: str) -> None:
        agent_phase = self.agent.phase if self.agent else None
        if self.media_pending is not None or agent_phase in ("bridging", "talking") or (
            not self.caller_answered and (self.agent is not None or bool(self.forks))
        ):
            self._ignored("media", media_pending=self.media_pending is not None, agent_phase=agent_phase)
            return
        target = _parse_target_uri(uri)
        if target is None:
            self._emit("media_failed", purpose=purpose, code=None, reason="bad_uri")
            return
        early = not self.caller_answered
        leg = _MediaLeg(ua=None, uri=uri, purpose=purpose, early_offer=early)
        self.media_pending = leg
        leg.ua = self._invite(target, self._guarded(self._on_media_event), offer=self.caller_offer if early
                              else None, calling_name=self.info.caller_display,
                              expire_time=MEDIA_SETUP_TIMEOUT_S)
        if leg.ua is None:
            self.media_pending = None
            self._emit("media_failed", purpose=purpose, code=None, reason="unreachable")
            return
        log.info("call.media_inviting", call_id=self.call_id, purpose=purpose, uri=uri, early_offer=early)

    def ring_command(self, offer_id: str, agent_id: str, uri: str, timeout_s: float,
                     caller_display: str | None, whisper_uri: str | None = None) -> None:
        if self.agent is not None or (not self.caller_answered and self.media_pending is not None):
            self._ignored("ring", offer_id=offer_id, agent_busy=self.agent is not None)
            return
        target = _parse_target_uri(uri)
        if target is None:
            self._emit("agent_failed", offer_id=offer_id, agent_id=agent_id, reason="unreachable", code=None)
            return
        early = not self.caller_answered
        if whisper_uri and early:
            # the agent would get the caller's offer and its answer would answer the caller: there is
            # no media to hold the caller on, nor an answer for the agent if the message failed
            log.info("call.whisper_skipped", call_id=self.call_id, offer_id=offer_id, reason="caller_not_answered")
            whisper_uri = None
        leg = _AgentLeg(ua=None, uri=uri, offer_id=offer_id, agent_id=agent_id, early_offer=early,
                        whisper_uri=whisper_uri or None)
        self.agent = leg
        display = caller_display if caller_display is not None else self.info.caller_display
        leg.ua = self._invite(target, self._guarded(self._on_agent_event),
                              offer=self.caller_offer if early else None, calling_name=display)
        if leg.ua is None:
            self.agent = None
            self._emit("agent_failed", offer_id=offer_id, agent_id=agent_id, reason="unreachable", code=None)
            return
        leg.ring_timer = Timeout(self._guarded(self._ring_timed_out, leg), max(0.1, float(timeout_s)))
        log.info("call.agent_ringing", call_id=self.call_id, offer_id=offer_id, agent_id=agent_id,
                 uri=uri, early_offer=early, whisper_uri=leg.whisper_uri)

    def ring_all_command(self, offer_id: str, targets: list[dict[str, str]], timeout_s: float,
                         caller_display: str | None) -> None:
        """Fork: INVITE every target at once; the first 200 wins (it becomes `self.agent` and goes
        the single-agent way), the others get CANCEL (a 200 racing the CANCEL gets ACK + BYE)."""
        if self.agent is not None or self.forks or (not self.caller_answered and self.media_pending is not None):
            self._ignored("ring_all", offer_id=offer_id, agent_busy=self.agent is not None or bool(self.forks))
            return
        early = not self.caller_answered
        display = caller_display if caller_display is not None else self.info.caller_display
        for target_spec in targets:
            agent_id, uri = str(target_spec.get("agent_id", "")), str(target_spec.get("uri", ""))
            target = _parse_target_uri(uri)
            leg = _AgentLeg(ua=None, uri=uri, offer_id=offer_id, agent_id=agent_id, early_offer=early)
            if target is not None:
                leg.ua = self._invite(target, self._guarded(self._on_fork_event, leg),
                                      offer=self.caller_offer if early else None, calling_name=display)
            if leg.ua is None:
                self._emit("agent_failed", offer_id=offer_id, agent_id=agent_id, reason="unreachable", code=None)
                continue
            self.forks.append(leg)
        if self.forks:
            self._fork_timer = Timeout(self._guarded(self._forks_timed_out), max(0.1, float(timeout_s)))
            log.info("call.agents_ringing", call_id=self.call_id, offer_id=offer_id,
                     agents=[leg.agent_id for leg in self.forks], early_offer=early)

    def _on_fork_event(self, leg: _AgentLeg, event: Any, ua: Any) -> None:
        if self.ended or leg not in self.forks or leg.ua is not ua:
            return
        if isinstance(event, CCEventRing):
            leg.got_provisional = True
        elif isinstance(event, CCEventConnect | CCEventPreConnect):
            # the first answer wins: the others are cancelled, the winner goes the one-agent way
            self.forks.remove(leg)
            self._cancel_forks(emit_reason="answered_elsewhere")
            self.agent = leg
            leg.ua.event_cb = self._guarded(self._on_agent_event)
            self._on_agent_ringing_event(leg, event)
        elif isinstance(event, CCEventFail | CCEventRedirect | CCEventDisconnect):
            self.forks.remove(leg)
            code = event.getData()[0] if isinstance(event, CCEventFail | CCEventRedirect) else None
            code = code if isinstance(code, int) else None
            reason = agent_failure_reason(code) if code is not None else (
                "no_answer" if leg.got_provisional else "unreachable")
            log.info("call.agent_failed", call_id=self.call_id, offer_id=leg.offer_id, reason=reason, code=code)
            self._emit("agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id, reason=reason, code=code)
            if not self.forks:
                self._cancel_forks()
        self._run_next_caller_reinvite()

    def _forks_timed_out(self) -> None:
        self._fork_timer = None
        for leg in list(self.forks):
            self._emit("agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id,
                       reason="no_answer" if leg.got_provisional else "unreachable", code=None)
        self._cancel_forks()

    def _cancel_forks(self, emit_reason: str | None = None) -> None:
        if self._fork_timer is not None:
            self._fork_timer.cancel()
            self._fork_timer = None
        forks, self.forks = self.forks, []
        for leg in forks:
            if emit_reason is not None:
                self._emit("agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id, reason=emit_reason,
                           code=None)
            self._disconnect(leg.ua)

    def cancel_ring_command(self, offer_id: str) -> None:
        if self.forks and all(leg.offer_id == offer_id for leg in self.forks):
            self._cancel_forks(emit_reason="cancelled")
            return
        leg = self.agent
        if leg is None or leg.offer_id != offer_id or leg.phase not in _CANCELLABLE_AGENT_PHASES:
            self._ignored("cancel_ring", offer_id=offer_id, agent_phase=leg.phase if leg else None)
            return
        self._drop_agent(leg)
        self._emit("agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id, reason="cancelled", code=None)

    def reject_command(self, code: int, reason: str) -> None:
        if not 400 <= int(code) <= 699:
            log.warning("call.reject_code_invalid", call_id=self.call_id, code=code)
            code = 500
        phrase = _STANDARD_REASON_PHRASES.get(int(code)) or _reason_phrase(reason)
        self.end(by="edge", reason=reason, caller_code=(int(code), phrase))

    def hangup_command(self, reason: str) -> None:
        self.end(by="edge", reason=reason, caller_code=HANGUP_UNANSWERED)

    # ------------------------------------------------------------------ caller leg
    def _on_caller_event(self, event: Any, ua: Any) -> None:
        if self.ended:
            return
        if (isinstance(event, CCEventConnect | CCEventFail) and self.caller_answered
                and event.getData()[0] != "ACK" and self._ack_pending_timer is None):
            # A final response to a re-INVITE we sent: sippy's transaction manager sends its ACK
            # only after this callback returns, so a queued re-INVITE sent from here would reach the
            # caller before that ACK (a UA may take it for a new transaction inside the old one;
            # SIPp aborts the call). The queue moves on at the reactor's next turn.
            self._ack_pending_timer = Timeout(self._guarded(self._after_caller_ack), 0)
        if isinstance(event, CCEventTry):
            self.caller_offer = event.getData()[3]
            # the caller hears local ringback until a leg answers it
            self.caller.recvEvent(CCEventRing((180, "Ringing", None)))
        elif isinstance(event, CCEventConnect):
            code, _reason, body = event.getData()[:3]
            if code == "ACK":
                return
            if self._reinvite_in_flight is not None:
                op, self._reinvite_in_flight = self._reinvite_in_flight, None
                op.on_answer(body)
            elif self._relay is not None and self._relay.target is ua:
                self._finish_relay(event)
        elif isinstance(event, CCEventFail) and self._reinvite_in_flight is not None:
            self._caller_reinvite_failed(event)
        elif isinstance(event, CCEventFail) and self._relay is not None and self._relay.target is ua:
            self._finish_relay(event)
        elif isinstance(event, CCEventUpdate):
            self._relay_offer(ua, event)
        elif isinstance(event, CCEventInfo):
            peer = self._peer_of(ua)
            if peer is not None:
                peer.recvEvent(CCEventInfo(event.getData()))
        elif isinstance(event, CCEventDisconnect | CCEventFail | CCEventRedirect):
            self.end(by="caller", reason="bye" if self.caller_answered else "cancel")
        self._run_next_caller_reinvite()

    def _answer_caller(self, body: SdpBody) -> None:
        self.caller.recvEvent(CCEventConnect((200, "OK", body.getCopy())))
        self.caller_answered = True

    def _reinvite_caller(self, offer: SdpBody, owner: Any, on_answer: Callable[[SdpBody], None],
                         on_failure: Callable[[int | None, str], None]) -> None:
        self._reinvites.append(_CallerReinvite(offer=offer, owner=owner, on_answer=on_answer,
                                               on_failure=on_failure))
        self._run_next_caller_reinvite()

    def _after_caller_ack(self) -> None:
        self._ack_pending_timer = None
        self._run_next_caller_reinvite()

    def _run_next_caller_reinvite(self) -> None:
        if (self.ended or not self._reinvites or self._reinvite_in_flight is not None
                or self._glare_timer is not None or self._ack_pending_timer is not None
                or self._relay is not None or not self.caller_answered
                or not isinstance(self.caller.state, UaStateConnected)):
            return
        op = self._reinvites.popleft()
        op.attempts += 1
        self._reinvite_in_flight = op
        # may answer synchronously (same SDP as before): _reinvite_in_flight is set first
        self.caller.recvEvent(CCEventUpdate(op.offer.getCopy()))

    def _caller_reinvite_failed(self, event: Any) -> None:
        op, self._reinvite_in_flight = self._reinvite_in_flight, None
        assert op is not None
        code, reason = event.getData()[:2]
        if code == 491 and op.attempts < GLARE_MAX_ATTEMPTS:
            delay = random.uniform(*GLARE_RETRY_S)
            log.info("call.reinvite_glare", call_id=self.call_id, retry_in_s=round(delay, 2))
            self._glare_timer = Timeout(self._guarded(self._retry_after_glare, op), delay)
            return
        op.on_failure(code if isinstance(code, int) else None, str(reason))

    def _retry_after_glare(self, op: _CallerReinvite) -> None:
        self._glare_timer = None
        if any(leg is op.owner for leg in (self.media_pending, self.agent)):
            self._reinvites.appendleft(op)
        self._run_next_caller_reinvite()

    def _forget_reinvites_of(self, owner: Any) -> None:
        self._reinvites = deque(op for op in self._reinvites if op.owner is not owner)

    # ------------------------------------------------------------------ in-dialog offers
    def _peer_of(self, ua: Any) -> Any:
        agent = self.agent
        if ua is self.caller:
            if agent is not None and agent.phase == "talking":
                return agent.ua
            if self.media is not None:
                return self.media.ua
            return None
        if agent is not None and agent.whisper is not None and agent.phase == "whisper":
            # the agent and its flow-id message are a session of their own
            if ua is agent.ua:
                return agent.whisper.ua
            if ua is agent.whisper.ua:
                return agent.ua
        if agent is not None and ua is agent.ua and agent.phase != "talking":
            return None
        return self.caller if self.caller_answered else None

    def _relay_offer(self, source: Any, event: Any) -> None:
        """Pass a re-INVITE/UPDATE offer to the other side (hold/resume); its answer comes back."""
        body = event.getData()
        target = self._peer_of(source)
        if target is None:
            # nobody to ask (e.g. the media leg just ended): keep the session as it is
            lsdp = source.lSDP
            source.recvEvent(CCEventConnect((200, "OK", lsdp.getCopy() if lsdp is not None else None)))
            return
        busy = (self._relay is not None or not isinstance(target.state, UaStateConnected)
                or (target is self.caller and self._reinvite_in_flight is not None))
        if busy or body is None:
            source.recvEvent(CCEventFail((491, "Request Pending")))
            return
        self._relay = _RelayedOffer(source=source, target=target)
        log.info("call.offer_relayed", call_id=self.call_id,
                 direction="from_caller" if source is self.caller else "to_caller")
        target.recvEvent(CCEventUpdate(body.getCopy()))

    def _finish_relay(self, event: Any) -> None:
        relay, self._relay = self._relay, None
        assert relay is not None
        if isinstance(event, CCEventConnect):
            code, reason, body = event.getData()[:3]
            relay.source.recvEvent(CCEventConnect((code, reason, body.getCopy() if body is not None else None)))
        else:
            code, reason = event.getData()[:2]
            relay.source.recvEvent(CCEventFail((code, reason)))

    def _abort_relay_involving(self, ua: Any) -> None:
        relay = self._relay
        if relay is None or (relay.source is not ua and relay.target is not ua):
            return
        self._relay = None
        if relay.target is ua and relay.source is not None:
            relay.source.recvEvent(CCEventFail((487, "Request Terminated")))

    # ------------------------------------------------------------------ media legs
    def _on_media_event(self, event: Any, ua: Any) -> None:
        if self.ended:
            return
        if self.media_pending is not None and self.media_pending.ua is ua:
            self._on_media_setup_event(self.media_pending, event)
        elif self.media is not None and self.media.ua is ua:
            self._on_current_media_event(self.media, event)
        self._run_next_caller_reinvite()

    def _on_media_setup_event(self, leg: _MediaLeg, event: Any) -> None:
        if isinstance(event, CCEventRing):
            return
        if isinstance(event, CCEventConnect):
            code, _reason, body = event.getData()[:3]
            if not leg.early_offer or body is None:
                # late offer answered without an offer: nothing to give the caller
                self._media_setup_failed(leg, code if isinstance(code, int) else None, "no_sdp")
                return
            self.media_pending = None
            self.media = leg
            self._answer_caller(body)
            self._emit("media_answered", purpose=leg.purpose, uri=leg.uri)
        elif isinstance(event, CCEventPreConnect):
            offer = event.getData()[2]
            if offer is None:
                self._media_setup_failed(leg, None, "no_sdp")
                return
            self._reinvite_caller(offer, leg, lambda answer: self._media_switched(leg, answer),
                                  lambda code, reason: self._media_setup_failed(leg, code, reason))
        elif isinstance(event, CCEventFail | CCEventRedirect):
            code, reason = event.getData()[:2]
            self._media_setup_failed(leg, code, str(reason), leg_gone=True)
        elif isinstance(event, CCEventDisconnect):
            self._media_setup_failed(leg, None, "timeout", leg_gone=True)

    def _media_switched(self, leg: _MediaLeg, answer: SdpBody) -> None:
        if self.media_pending is not leg:
            return
        leg.ua.recvEvent(CCEventConnect((200, "OK", answer.getCopy() if answer is not None else None)))
        previous, self.media, self.media_pending = self.media, leg, None
        if previous is not None:
            self._disconnect(previous.ua)
        self._emit("media_answered", purpose=leg.purpose, uri=leg.uri)

    def _media_setup_failed(self, leg: _MediaLeg, code: int | None, reason: str, leg_gone: bool = False) -> None:
        if self.media_pending is not leg:
            return
        self.media_pending = None
        self._forget_reinvites_of(leg)
        if not leg_gone:
            self._disconnect(leg.ua)
        log.info("call.media_failed", call_id=self.call_id, purpose=leg.purpose, code=code, reason=reason)
        self._emit("media_failed", purpose=leg.purpose, code=code, reason=reason)

    def _on_current_media_event(self, leg: _MediaLeg, event: Any) -> None:
        if isinstance(event, CCEventDisconnect | CCEventFail | CCEventRedirect) and not self._is_relay_answer(
            leg.ua, event
        ):
            self._abort_relay_involving(leg.ua)
            self.media = None
            self._emit("media_ended", purpose=leg.purpose)
        elif isinstance(event, CCEventUpdate):
            self._relay_offer(leg.ua, event)
        elif isinstance(event, CCEventConnect | CCEventFail) and self._is_relay_answer(leg.ua, event):
            self._finish_relay(event)

    def _is_relay_answer(self, ua: Any, event: Any) -> bool:
        return (self._relay is not None and self._relay.target is ua
                and isinstance(event, CCEventConnect | CCEventFail) and isinstance(ua.state, UaStateConnected))

    # ------------------------------------------------------------------ agent leg
    def _on_agent_event(self, event: Any, ua: Any) -> None:
        leg = self.agent
        if self.ended or leg is None or leg.ua is not ua:
            return
        if leg.phase == "ringing":
            self._on_agent_ringing_event(leg, event)
        elif leg.phase in ("whisper_setup", "whisper"):
            self._on_agent_whisper_event(leg, event, ua)
        elif leg.phase == "rebridging":
            self._on_agent_rebridging_event(leg, event)
        elif leg.phase == "bridging":
            if isinstance(event, CCEventDisconnect | CCEventFail | CCEventRedirect):
                self._agent_lost_while_bridging(leg)
        elif leg.phase == "talking":
            if self._is_relay_answer(ua, event):
                self._finish_relay(event)
            elif isinstance(event, CCEventUpdate):
                self._relay_offer(ua, event)
            elif isinstance(event, CCEventInfo):
                self.caller.recvEvent(CCEventInfo(event.getData()))
            elif isinstance(event, CCEventDisconnect | CCEventFail | CCEventRedirect):
                self._abort_relay_involving(ua)
                self.end(by="agent", reason="bye", agent_gone=True)
        self._run_next_caller_reinvite()

    def _on_agent_ringing_event(self, leg: _AgentLeg, event: Any) -> None:
        if isinstance(event, CCEventRing):
            leg.got_provisional = True
        elif isinstance(event, CCEventConnect):
            code, _reason, body = event.getData()[:3]
            self._cancel_ring_timer(leg)
            if not leg.early_offer or body is None:
                self._fail_agent(leg, "no_sdp", code if isinstance(code, int) else None)
                return
            leg.phase = "talking"
            self._answer_caller(body)
            log.info("call.agent_connected", call_id=self.call_id, offer_id=leg.offer_id, early_offer=True)
            self._emit("agent_answered", offer_id=leg.offer_id, agent_id=leg.agent_id)
        elif isinstance(event, CCEventPreConnect):
            offer = event.getData()[2]
            self._cancel_ring_timer(leg)
            if offer is None:
                self._fail_agent(leg, "no_sdp", 200)
                return
            if leg.whisper_uri is not None:
                self._start_whisper(leg, offer)
                return
            leg.phase = "bridging"
            self._reinvite_caller(offer, leg, lambda answer: self._agent_bridged(leg, answer),
                                  lambda code, reason: self._agent_bridge_failed(leg, code, reason))
        elif isinstance(event, CCEventFail | CCEventRedirect):
            code = event.getData()[0]
            code = code if isinstance(code, int) else None
            self._fail_agent(leg, agent_failure_reason(code), code, leg_gone=True)
        elif isinstance(event, CCEventDisconnect):
            # sippy's no-reply timer fired (CANCEL already sent)
            reason = "no_answer" if leg.got_provisional else "unreachable"
            self._fail_agent(leg, reason, None, leg_gone=True)

    # ------------------------------------------------------------------ flow-id message
    def _start_whisper(self, leg: _AgentLeg, offer: SdpBody) -> None:
        """The agent answered with `offer` (its 200's ACK is held): INVITE the message with it."""
        leg.phase = "whisper_setup"
        leg.whispered = True
        leg.agent_offer = offer
        uri = leg.whisper_uri or ""
        target = _parse_target_uri(uri)
        if target is None:
            self._whisper_failed(leg, None, "bad_uri")
            return
        wleg = _MediaLeg(ua=None, uri=uri, purpose="whisper", early_offer=True)
        leg.whisper = wleg
        wleg.ua = self._invite(target, self._guarded(self._on_whisper_event, leg), offer=offer,
                               calling_name=self.info.caller_display, expire_time=MEDIA_SETUP_TIMEOUT_S)
        if wleg.ua is None:
            leg.whisper = None
            self._whisper_failed(leg, None, "unreachable")
            return
        log.info("call.whisper_inviting", call_id=self.call_id, offer_id=leg.offer_id, uri=uri)

    def _on_whisper_event(self, leg: _AgentLeg, event: Any, ua: Any) -> None:
        wleg = leg.whisper
        if self.ended or self.agent is not leg or wleg is None or wleg.ua is not ua:
            return
        if leg.phase == "whisper_setup":
            if isinstance(event, CCEventConnect):
                code, _reason, answer = event.getData()[:3]
                if answer is None:
                    self._whisper_failed(leg, code if isinstance(code, int) else None, "no_sdp")
                    return
                leg.phase = "whisper"
                leg.agent_offer = None
                # the agent's ACK carries the message's answer: the agent hears the message
                leg.ua.recvEvent(CCEventConnect((200, "OK", answer.getCopy())))
                log.info("call.whisper_playing", call_id=self.call_id, offer_id=leg.offer_id)
            elif isinstance(event, CCEventPreConnect):
                self._whisper_failed(leg, None, "no_sdp")
            elif isinstance(event, CCEventFail | CCEventRedirect):
                code, reason = event.getData()[:2]
                self._whisper_failed(leg, code if isinstance(code, int) else None, str(reason), leg_gone=True)
            elif isinstance(event, CCEventDisconnect):
                self._whisper_failed(leg, None, "timeout", leg_gone=True)
        elif leg.phase == "whisper":
            if self._is_relay_answer(ua, event):
                self._finish_relay(event)
            elif isinstance(event, CCEventUpdate):
                self._relay_offer(ua, event)
            elif isinstance(event, CCEventDisconnect | CCEventFail | CCEventRedirect):
                # the message ended: connect the caller
                self._abort_relay_involving(ua)
                leg.whisper = None
                ua.event_cb = None
                log.info("call.whisper_ended", call_id=self.call_id, offer_id=leg.offer_id)
                leg.phase = "rebridging"
                self._request_agent_offer(leg)
        self._run_next_caller_reinvite()

    def _whisper_failed(self, leg: _AgentLeg, code: int | None, reason: str, leg_gone: bool = False) -> None:
        """The message could not be played: connect caller and agent without it."""
        wleg, leg.whisper = leg.whisper, None
        if wleg is not None and not leg_gone:
            self._disconnect(wleg.ua)
        elif wleg is not None:
            wleg.ua.event_cb = None
        log.warning("call.whisper_failed", call_id=self.call_id, offer_id=leg.offer_id, uri=leg.whisper_uri,
                    code=code, reason=reason)
        offer, leg.agent_offer = leg.agent_offer, None
        leg.phase = "bridging"
        self._reinvite_caller(offer, leg, lambda answer: self._agent_bridged(leg, answer),
                              lambda code, reason: self._agent_bridge_failed(leg, code, reason))

    def _on_agent_whisper_event(self, leg: _AgentLeg, event: Any, ua: Any) -> None:
        if leg.phase == "whisper" and self._is_relay_answer(ua, event):
            self._finish_relay(event)
        elif isinstance(event, CCEventUpdate):
            if leg.phase == "whisper":
                self._relay_offer(ua, event)
            else:
                ua.recvEvent(CCEventFail((491, "Request Pending")))
        elif isinstance(event, CCEventDisconnect | CCEventFail | CCEventRedirect) and not _dialog_up(ua):
            # (a failure that leaves the dialog up answers an offer relayed before: not a hang-up)
            self._abort_relay_involving(ua)
            self._fail_agent(leg, "hung_up", None, leg_gone=True)

    def _request_agent_offer(self, leg: _AgentLeg) -> None:
        """After the message: re-INVITE the agent without SDP; its offer goes to the caller."""
        leg.retry_timer = None
        if self.ended or self.agent is not leg or leg.phase != "rebridging":
            return
        if not reinvite_without_offer(leg.ua):
            # an offer/answer exchange on the agent's dialog is still open (e.g. a relayed re-INVITE)
            leg.retries += 1
            if leg.retries > AGENT_IDLE_MAX_ATTEMPTS:
                self._fail_agent(leg, "rejected", None)
                return
            leg.retry_timer = Timeout(self._guarded(self._request_agent_offer, leg), AGENT_IDLE_RETRY_S)
            return
        leg.offer_requested = True
        log.info("call.agent_offer_requested", call_id=self.call_id, offer_id=leg.offer_id)

    def _on_agent_rebridging_event(self, leg: _AgentLeg, event: Any) -> None:
        if isinstance(event, CCEventConnect) and leg.offer_requested:
            leg.offer_requested = False
            code, _reason, offer = event.getData()[:3]
            if offer is None:
                self._fail_agent(leg, "no_sdp", code if isinstance(code, int) else None)
                return
            leg.phase = "bridging"
            self._reinvite_caller(offer, leg, lambda answer: self._agent_bridged(leg, answer),
                                  lambda code, reason: self._agent_bridge_failed(leg, code, reason))
        elif isinstance(event, CCEventFail) and leg.offer_requested:
            leg.offer_requested = False
            code = event.getData()[0]
            code = code if isinstance(code, int) else None
            if code == 491 and leg.retries < GLARE_MAX_ATTEMPTS:
                leg.retries += 1
                delay = random.uniform(*GLARE_RETRY_OWN_S)
                log.info("call.agent_reinvite_glare", call_id=self.call_id, retry_in_s=round(delay, 2))
                leg.retry_timer = Timeout(self._guarded(self._request_agent_offer, leg), delay)
                return
            if code in (408, 481):
                # sippy ended the dialog (BYE sent)
                self._fail_agent(leg, "hung_up", code, leg_gone=True)
            else:
                self._fail_agent(leg, "rejected", code)
        elif isinstance(event, CCEventUpdate):
            leg.ua.recvEvent(CCEventFail((491, "Request Pending")))
        elif isinstance(event, CCEventDisconnect | CCEventFail | CCEventRedirect) and not _dialog_up(leg.ua):
            self._abort_relay_involving(leg.ua)
            self._fail_agent(leg, "hung_up", None, leg_gone=True)

    def _agent_bridged(self, leg: _AgentLeg, answer: SdpBody) -> None:
        if self.agent is not leg:
            return
        leg.ua.recvEvent(CCEventConnect((200, "OK", answer.getCopy() if answer is not None else None)))
        leg.phase = "talking"
        for media_leg in (self.media, self.media_pending):
            if media_leg is not None:
                self._forget_reinvites_of(media_leg)
                self._disconnect(media_leg.ua)
        self.media = self.media_pending = None
        log.info("call.agent_connected", call_id=self.call_id, offer_id=leg.offer_id, early_offer=False,
                 whispered=leg.whispered)
        self._emit("agent_answered", offer_id=leg.offer_id, agent_id=leg.agent_id)

    def _agent_bridge_failed(self, leg: _AgentLeg, code: int | None, reason: str) -> None:
        if self.agent is not leg:
            return
        log.info("call.agent_bridge_failed", call_id=self.call_id, code=code, reason=reason)
        self._fail_agent(leg, "rejected", code)

    def _agent_lost_while_bridging(self, leg: _AgentLeg) -> None:
        queued = any(op.owner is leg for op in self._reinvites)
        if queued or (self._reinvite_in_flight is None or self._reinvite_in_flight.owner is not leg):
            # the caller was not moved yet: it stays on its media leg (an agent that answered and
            # heard its flow-id message hung up; one without has never been reported otherwise)
            self._fail_agent(leg, "hung_up" if leg.whispered else "rejected", None, leg_gone=True)
            return
        # the caller is being re-INVITEd to the agent's SDP right now; no way back to the media
        self.end(by="agent", reason="bye", agent_gone=True)

    def _ring_timed_out(self, leg: _AgentLeg) -> None:
        leg.ring_timer = None
        if self.agent is leg and leg.phase == "ringing" and not self.ended:
            # a phone that never sent any response is unreachable, not unanswered (a ring timeout
            # shorter than NO_REPLY_TIMEOUT_S fires first)
            self._fail_agent(leg, "no_answer" if leg.got_provisional else "unreachable", None)

    def _fail_agent(self, leg: _AgentLeg, reason: str, code: int | None, leg_gone: bool = False) -> None:
        if self.agent is not leg:
            return
        if leg_gone:
            self._cancel_ring_timer(leg)
            self._forget_reinvites_of(leg)
            self._drop_whisper(leg)
            self.agent = None
        else:
            self._drop_agent(leg)
        log.info("call.agent_failed", call_id=self.call_id, offer_id=leg.offer_id, reason=reason, code=code)
        self._emit("agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id, reason=reason, code=code)

    def _drop_agent(self, leg: _AgentLeg) -> None:
        self._cancel_ring_timer(leg)
        self._forget_reinvites_of(leg)
        self._drop_whisper(leg)
        self.agent = None
        self._disconnect(leg.ua)

    def _drop_whisper(self, leg: _AgentLeg) -> None:
        wleg, leg.whisper = leg.whisper, None
        if wleg is not None:
            self._abort_relay_involving(wleg.ua)
            self._disconnect(wleg.ua)

    @staticmethod
    def _cancel_ring_timer(leg: _AgentLeg) -> None:
        """Stop the agent leg's timers: the ring timeout and a pending re-INVITE retry."""
        for name in ("ring_timer", "retry_timer"):
            timer = getattr(leg, name)
            if timer is not None:
                timer.cancel()
                setattr(leg, name, None)

    # ------------------------------------------------------------------ teardown
    def end(self, *, by: str, reason: str, caller_code: tuple[int, str] | None = None,
            agent_gone: bool = False) -> None:
        """Tear every leg down and report `ended` once; the call is forgotten afterwards."""
        if self.ended:
            return
        self.ended = True
        for name in ("_glare_timer", "_ack_pending_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)
        self._reinvites.clear()
        for leg in (self.media_pending, self.media):
            if leg is not None:
                self._disconnect(leg.ua)
        self._cancel_forks()
        if self.agent is not None:
            self._cancel_ring_timer(self.agent)
            self._drop_whisper(self.agent)
            if not agent_gone:
                self._disconnect(self.agent.ua)
            else:
                self.agent.ua.event_cb = None
        code: int | None = None
        if by != "caller":
            if self.caller_answered:
                self._disconnect(self.caller)
            else:
                code, phrase = caller_code or HANGUP_UNANSWERED
                self._fail_caller(code, phrase)
        self.router.forget(self.call_id)
        log.info("call.ended", call_id=self.call_id, by=by, reason=reason, code=code)
        self._emit("ended", by=by, reason=reason, code=code)

    def _fail_caller(self, code: int, phrase: str) -> None:
        try:
            self.caller.recvEvent(CCEventFail((code, phrase)))
        except Exception:
            log.exception("call.caller_reject_failed", call_id=self.call_id, code=code)
        self.caller.event_cb = None

    def _disconnect(self, ua: Any) -> None:
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
            log.exception("call.leg_disconnect_failed", call_id=self.call_id)

    # ------------------------------------------------------------------ helpers
    def _invite(self, target: Any, event_cb: Callable[[Any, Any], None], *, offer: SdpBody,
                calling_name: str | None, expire_time: float | None = None) -> Any:
        """Create a UAC leg and send its INVITE (with `offer`, or without SDP for a late offer)."""
        host, port = target.getAddr()
        ua = UA(self.router.sip_config, event_cb, nh_address=(host, port), expire_time=expire_time)
        ua.lContact = contact_without_display_name()
        ua.no_reply_time = NO_REPLY_TIMEOUT_S
        event = _TryWithRequestUri((None, self.info.caller_user, target.username,
                                    offer.getCopy() if offer is not None else None, None,
                                    quotable_display_name(calling_name)))
        event.request_uri = target
        try:
            ua.recvEvent(event)
        except Exception:
            log.exception("call.invite_failed", call_id=self.call_id, uri=str(target))
            ua.event_cb = None
            return None
        return ua

    def _guarded(self, handler: Callable[..., None], *bound: Any) -> Callable[..., None]:
        """Wrap a sippy callback: an exception in our logic must not unwind into sippy's state machine."""
        def guarded(*args: Any) -> None:
            try:
                handler(*bound, *args)
            except Exception:
                log.exception("call.handler_failed", call_id=self.call_id, handler=handler.__name__)
                try:
                    self.end(by="edge", reason="internal_error", caller_code=(500, "Server Internal Error"))
                except Exception:
                    log.exception("call.teardown_failed", call_id=self.call_id)
        return guarded

    def _ignored(self, command: str, **details: Any) -> None:
        log.warning("call.command_ignored", call_id=self.call_id, command=command, reason="wrong_state",
                    **details)

    def _emit(self, kind: str, **data: Any) -> None:
        self.router.emit(kind, self.call_id, data)


class CallRouter:
    """All calls of the edge: out-of-dialog requests, commands by edge call id, shutdown."""

    def __init__(self, *, host: str, port: int, emit: Callable[[Fact], None],
                 advertised_host: str | None, max_message_bytes: int, user_agent: str,
                 guard: SourceGuard | None = None) -> None:
        SipConf.my_uaname = user_agent
        self.guard = guard or SourceGuard()
        self._emit_fact = emit
        self.calls: dict[str, CallController] = {}
        self.accepting = True
        tm_class = make_transaction_manager_class(
            max_message_bytes=max_message_bytes, advertised_host=advertised_host,
            on_screened=_log_screened,
        )
        self.sip_config: dict[str, Any] = {
            "_sip_address": host, "_sip_port": port, "_sip_logger": SipLogger("sip-edge"),
        }
        self.sip_config["_sip_tm"] = tm_class(self.sip_config, self._recv_out_of_dialog)
        self._cycles = CycleCollector()
        Timeout(self._collect_cycles, GC_TICK_S, -1)

    @property
    def bound_address(self) -> tuple[str, int]:
        servers = self.sip_config["_sip_tm"].l4r.cache_l2s.values()
        host, port = next(iter(servers)).uopts.laddress
        return str(host), int(port)

    def emit(self, kind: str, call_id: str, data: dict[str, Any]) -> None:
        self._emit_fact(Fact(kind=kind, call_id=call_id, data=data, ts_ms=int(time.time() * 1000)))

    def forget(self, call_id: str) -> None:
        self.calls.pop(call_id, None)

    def _collect_cycles(self) -> None:
        try:
            self._cycles.tick(len(self.calls))
        except Exception:
            log.exception("sip.gc_failed")

    # ------------------------------------------------------------------ SIP in
    def _recv_out_of_dialog(self, req: Any, sip_t: Any) -> Any:
        """sippy's callback for requests that match no dialog."""
        try:
            return self._route(req, sip_t)
        except Exception:
            log.exception("sip.request_failed", method=req.getMethod())
            if req.getMethod() == "ACK":
                return None
            return (req.genResponse(400, "Bad Request"), None, None)

    def _route(self, req: Any, sip_t: Any) -> Any:
        method = req.getMethod()
        if method == "ACK":
            return None
        if req.getHFBody("to").getTag() is not None:
            return (req.genResponse(481, "Call Leg/Transaction Does Not Exist"), None, None)
        if method == "OPTIONS":
            resp = req.genResponse(200, "OK")
            resp.appendHeader(SipHeader(name="allow", body=SipGenericHF(SIP_METHODS_ALLOWED, "allow")))
            return (resp, None, None)
        if method != "INVITE":
            if method == "BYE":
                return (req.genResponse(481, "Call Leg/Transaction Does Not Exist"), None, None)
            if method in _KNOWN_SIP_METHODS:
                resp = req.genResponse(405, "Method Not Allowed")
                resp.appendHeader(SipHeader(name="allow", body=SipGenericHF(SIP_METHODS_ALLOWED, "allow")))
                return (resp, None, None)
            return (req.genResponse(501, "Not Implemented"), None, None)
        if req.countHFs("max-forwards") > 0 and req.getHFBody("max-forwards").getNum() <= 0:
            return (req.genResponse(483, "Too Many Hops"), None, None)
        source_ip = str(req.getSource()[0])
        if not self.guard.trusted(source_ip):
            self.guard.refused["untrusted_source"] += 1
            log.debug("sip.invite_refused", reason="untrusted_source", source=source_ip)
            return (req.genResponse(403, "Forbidden"), None, None)
        if not self.accepting:
            return (_retry_later(req, DRAIN_RETRY_AFTER_S), None, None)
        refusal = self.guard.take_token(source_ip)
        if refusal is not None:
            log.debug("sip.invite_refused", reason=refusal.reason, source=source_ip)
            return (_retry_later(req, refusal.retry_after_s or 1), None, None)
        if req.getBody() is None:
            # INVITE without an offer is not supported (the first leg would have to offer)
            return (req.genResponse(488, "Not Acceptable Here"), None, None)
        if req.countHFs("contact") == 0:
            return (req.genResponse(400, "Bad Request - Missing Contact"), None, None)
        try:
            # sippy parses headers lazily: parse the ones a call needs before it exists
            req.getHFBody("contact").getUrl()
            req.getHFBody("from").getUrl()
            req.getHFBody("to").getUrl()
            req.getRURI()
            req.getBody().parse()
        except Exception:
            return (req.genResponse(400, "Bad Request"), None, None)
        media_type = media_type_of(str(req.getBody()))
        if media_type is None:
            # neither RTP (audio) nor MSRP (chat), e.g. T.38 fax: no call is created
            log.info("sip.invite_refused", reason="media_not_acceptable", source=source_ip,
                     media=_first_media_line(str(req.getBody())))
            resp = req.genResponse(488, "Not Acceptable Here")
            resp.appendHeader(SipHeader(name="warning", body=SipGenericHF(MEDIA_NOT_AVAILABLE_WARNING, "warning")))
            return (resp, None, None)
        return self._new_call(req, sip_t, media_type)

    def _new_call(self, req: Any, sip_t: Any, media_type: str) -> Any:
        from_hf = req.getHFBody("from")
        source_host, source_port = req.getSource()
        info = CallerInfo(
            flow=req.getRURI().username or "",
            caller_user=from_hf.getUrl().username or "",
            caller_uri=str(from_hf.getUrl()),
            caller_display=from_hf.getUri().name or None,
            sip_call_id=str(req.getHFBody("call-id")),
            source=f"{source_host}:{source_port}",
            priority=call_priority(req),
            media_type=media_type,
        )
        call = CallController(router=self, call_id=uuid4().hex, info=info)
        call.caller = UA(self.sip_config, call._guarded(call._on_caller_event))
        call.caller.lContact = contact_without_display_name()
        self.calls[call.call_id] = call
        try:
            result = call.caller.recvRequest(req, sip_t)
        except Exception:
            # sippy gave up on this INVITE half-way (a header it parses lazily is malformed): the
            # call was never reported, so forget it (the caller gets a 400 from our caller)
            self.forget(call.call_id)
            call.ended = True
            call.caller.event_cb = None
            raise
        if call.ended:
            return result
        log.info("call.arrived", call_id=call.call_id, flow=info.flow, caller=info.caller_user,
                 sip_call_id=info.sip_call_id, media_type=info.media_type)
        self.emit("arrived", call.call_id, {
            "flow": info.flow, "caller_user": info.caller_user, "caller_uri": info.caller_uri,
            "caller_display": info.caller_display, "sip_call_id": info.sip_call_id, "source": info.source,
            "priority": info.priority, "media_type": info.media_type,
        })
        return result

    # ------------------------------------------------------------------ commands
    def command(self, name: str, call_id: str, *args: Any) -> None:
        if name == "hangup_all":
            self.hangup_all(*args)
            return
        call = self.calls.get(call_id)
        if call is None or call.ended:
            log.warning("call.command_ignored", call_id=call_id, command=name, reason="unknown_call")
            return
        handler = getattr(call, f"{name}_command")
        handler(*args)

    def hangup_all(self, reason: str) -> None:
        for call in list(self.calls.values()):
            try:
                call.hangup_command(reason)
            except Exception:
                log.exception("call.hangup_failed", call_id=call.call_id)

    def shutdown(self, then: Callable[[], None]) -> None:
        """Hang up every call, give the BYEs/CANCELs a moment to leave, close sockets, then `then()`."""
        self.accepting = False
        had_calls = bool(self.calls)
        self.hangup_all("shutdown")
        Timeout(self._close, SHUTDOWN_FLUSH_S if had_calls else 0.0, 1, then)

    def _close(self, then: Callable[[], None]) -> None:
        from sippy.Core.EventDispatcher import ED2

        try:
            self.sip_config["_sip_tm"].shutdown()
        except Exception:
            log.exception("sip.shutdown_failed")
        finally:
            # sippy's reactor is a process-wide singleton: drop this stack's timers so that a
            # later SipStack in the same process does not run them.
            ED2.tlisteners = []
            ED2.twasted = 0
            then()


def _retry_later(req: Any, retry_after_s: int) -> Any:
    resp = req.genResponse(503, "Service Unavailable")
    resp.appendHeader(SipHeader(name="retry-after", body=SipGenericHF(str(retry_after_s), "retry-after")))
    return resp


def _log_screened(reason: str, source: str, answered: bool) -> None:
    if answered:
        log.warning("sip.bad_request_answered", code=400, problem=reason, source=source)
    else:
        log.warning("sip.datagram_dropped", reason=reason, source=source)


def _dialog_up(ua: Any) -> bool:
    """The UA's dialog is confirmed and idle or in an offer/answer exchange (not ended)."""
    state = getattr(ua, "state", None)
    return state is not None and bool(getattr(state, "connected", False)) and not getattr(state, "dead", False)


def _parse_target_uri(uri: str) -> Any:
    """Parse a command's SIP URI (user, host, port and URI parameters); None if unusable over UDP."""
    try:
        target = SipURL(uri.strip().removeprefix("<").removesuffix(">"))
    except Exception:
        log.warning("call.bad_uri", uri=uri)
        return None
    if target.transport is not None and str(target.transport).lower() != "udp":
        log.warning("call.unsupported_transport", uri=uri)
        return None
    if not target.host:
        return None
    return target


def _first_media_line(sdp: str) -> str:
    for line in sdp.splitlines():
        if line.startswith("m="):
            return line[:80]
    return ""


def _reason_phrase(reason: str) -> str:
    phrase = _REASON_PHRASE.sub(" ", reason).strip()
    return phrase or "Rejected"
