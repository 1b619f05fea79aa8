"""Ring-all: INVITE several agents at once; the first to answer gets the call, the others a CANCEL.

Reads: `command.ring_all` and `command.cancel_ring` (through `Call`), the events of the fork legs'
UAs, the fork timeout. Writes: INVITEs, CANCELs to the losers (a 200 racing the CANCEL gets ACK +
BYE, see `sippy/patches.py`), `agent_failed` for each loser; the winner becomes `call.agent` and goes
on as a single ringing agent (`agent.py`).

The same forking rings the several registered contacts of one agent (`one_agent`, from a
`command.ring` to an AOR, `registrations.py`): then only the agent's outcome is reported, once: its
answer, or its failure when the last contact failed (or at the timeout, or on `cancel_ring`).

A CANCEL during ring-all is handled here: from the dispatcher (`cancel`, reason `cancelled`),
at the fork timeout (`no_answer`/`unreachable`), when another fork answers (`answered_elsewhere`),
and when the caller goes away (`Call.end` calls `cancel_all`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from sippy.Time.Timeout import Timeout

from callcenter_sip_edge import sip_events
from callcenter_sip_edge.agent import agent_failure_reason
from callcenter_sip_edge.confirmed import checkpoint
from callcenter_sip_edge.legs import AgentLeg, SdpBody, SipUA, parse_target_uri
from callcenter_sip_edge.sip_events import LegEvents
from callcenter_sip_edge.sippy import dialog

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

log = structlog.get_logger(__name__)


class Forks:
    """The ring-all legs of one call still ringing, with no winner yet."""

    __slots__ = ("_timer", "call", "legs", "one_agent")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.legs: list[AgentLeg] = []
        self._timer: Any = None
        self.one_agent = False

    def _report(self, legs: list[AgentLeg], reason: str, code: int | None) -> None:
        """`agent_failed` for each of `legs` (ring-all), or once for the one agent of its contacts."""
        for leg in legs[:1] if self.one_agent else legs:
            self.call.emit("agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id, reason=reason, code=code)

    def start(self, offer_id: str, targets: list[dict[str, str]], timeout_s: float,
              caller_display: str | None, one_agent: bool = False, whisper_uri: str | None = None) -> None:
        """Fork: INVITE every target at once; the first 200 wins (it becomes `call.agent` and goes
        the single-agent way), the others get CANCEL (a 200 racing the CANCEL gets ACK + BYE).
        With `whisper_uri` (the flow-id message of a `command.ring` to an AOR) every fork carries
        it, so the contact that answers hears it as a single agent would (`whisper`)."""
        call = self.call
        command = "ring" if one_agent else "ring_all"
        if call.agent is not None or self.legs or (not call.caller_answered and call.media_pending is not None):
            call.refuse(command, offer_id=offer_id, agent_busy=call.agent is not None or bool(self.legs))
            return
        if not targets:
            call.refuse(command, "no_targets", offer_id=offer_id)
            return
        early = not call.caller_answered
        if whisper_uri and early:
            log.info("call.whisper_skipped", offer_id=offer_id, reason="caller_not_answered")   # as agent.ring
            whisper_uri = None
        display = caller_display if caller_display is not None else call.info.caller_display
        self.one_agent = one_agent
        unreachable: list[AgentLeg] = []
        for target_spec in targets:
            agent_id, uri = str(target_spec.get("agent_id", "")), str(target_spec.get("uri", ""))
            target = parse_target_uri(uri)
            leg = AgentLeg(ua=None, uri=uri, offer_id=offer_id, agent_id=agent_id, early_offer=early,
                           whisper_uri=whisper_uri or None)
            if target is not None:
                leg.ua = call.invite(target, _ForkLeg(self, leg), offer=call.caller_offer if early else None,
                                     calling_name=display, agent=True)
            if leg.ua is None:
                unreachable.append(leg)
                continue
            self.legs.append(leg)
        if unreachable and (not one_agent or not self.legs):
            self._report(unreachable, "unreachable", None)
        if self.legs:
            self._timer = Timeout(call.guarded(self._timed_out), max(0.1, float(timeout_s)))
            log.info("call.agents_ringing", offer_id=offer_id, agents=[leg.agent_id for leg in self.legs],
                     early_offer=early)

    def cancel(self, offer_id: str) -> bool:
        """`command.cancel_ring` for this ring-all: CANCEL every fork; False if it is not ours."""
        if self.legs and all(leg.offer_id == offer_id for leg in self.legs):
            self.cancel_all(emit_reason="cancelled")
            return True
        return False

    def cancel_all(self, emit_reason: str | None = None) -> None:
        """CANCEL (or BYE) every fork still ringing; report each as `agent_failed(emit_reason)`."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        legs, self.legs = self.legs, []
        if emit_reason is not None and not (self.one_agent and emit_reason == "answered_elsewhere"):
            self._report(legs, emit_reason, None)
        for leg in legs:
            dialog.hang_up(leg.ua)
        if legs and emit_reason is None:
            checkpoint(self.call)   # no agent_failed now: the forks' INVITEs leave the checkpoint here

    def _timed_out(self) -> None:
        self._timer = None
        legs = list(self.legs)
        if self.one_agent:
            self._report(legs, "no_answer" if any(leg.got_provisional for leg in legs) else "unreachable", None)
        else:
            for leg in legs:
                self._report([leg], "no_answer" if leg.got_provisional else "unreachable", None)
        self.cancel_all()

    def won(self, leg: AgentLeg) -> None:
        """`leg` answered first: the others are cancelled, the winner goes the one-agent way."""
        call = self.call
        self.legs.remove(leg)
        self.cancel_all(emit_reason="answered_elsewhere")
        call.agent = leg
        assert leg.ua is not None   # it has just answered
        leg.ua.event_cb = call.event_cb(call.agent_legs)

    def lost(self, leg: AgentLeg, code: int | None) -> None:
        """`leg` failed or hung up before answering."""
        self.legs.remove(leg)
        reason = agent_failure_reason(code) if code is not None else (
            "no_answer" if leg.got_provisional else "unreachable")
        log.info("call.agent_failed", offer_id=leg.offer_id, reason=reason, code=code)
        if not self.one_agent or not self.legs:
            self._report([leg], reason, code)
        if not self.legs:
            self.cancel_all()


class _ForkLeg(LegEvents):
    """The events of one fork's UA while it rings."""

    __slots__ = ("forks", "leg")

    def __init__(self, forks: Forks, leg: AgentLeg) -> None:
        self.forks = forks
        self.leg = leg

    def current(self, ua: SipUA) -> LegEvents | None:
        leg = self.leg
        return self if leg in self.forks.legs and leg.ua is ua else None

    def on_ringing(self, ua: SipUA) -> None:
        self.leg.got_provisional = True

    def on_answer(self, ua: SipUA, code: int, reason: str, body: SdpBody | None) -> None:
        self.forks.won(self.leg)
        self.forks.call.agent_legs.ringing.on_answer(ua, code, reason, body)

    def on_offer(self, ua: SipUA, offer: SdpBody | None) -> None:
        self.forks.won(self.leg)
        self.forks.call.agent_legs.ringing.on_offer(ua, offer)

    def on_failed(self, ua: SipUA, code: int, reason: str) -> None:
        self.forks.lost(self.leg, sip_events.int_code(code))

    def on_redirect(self, ua: SipUA, code: int, reason: str) -> None:
        self.forks.lost(self.leg, sip_events.int_code(code))

    def on_hangup(self, ua: SipUA) -> None:
        self.forks.lost(self.leg, None)
