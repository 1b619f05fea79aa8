"""The adoption of the calls a previous process of this edge left (same id, same address).

Reads: the checkpoints `service` loaded at start (made by `confirmed.checkpoint`).
Writes: adopted calls in the router,
with their two legs rebuilt as confirmed dialogs (`sippy/resume.py`); for calls that cannot be
carried on, `call_ended` (by edge, reason `edge_restarted`).

Runs in sippy's turns only, `adopt` (at start) before the first datagram is read.

What is carried on: a talking call (caller and agent connected): a BYE of either side is answered
and the other side gets its BYE, re-INVITEs/UPDATEs are relayed, commands (hangup) work, and each
leg's session timer (RFC 4028) goes on with the interval and refresher negotiated, from where its
interval was (`SessionTimers.adopt`). What is
not: a call ringing an agent, on welcome/queue media, or hearing the flow-id message: the
transactions in flight (INVITEs, timers) died with the process, so the call is ended at once and
the dispatcher writes its CDR and frees the agent. A caller whose INVITE was not answered yet
(checkpointed at its arrival, `uas`) gets a final 500 with Retry-After in a new server transaction
(retransmitted until its ACK). The caller and the media leg it heard get BYE
(checkpointed when the media answered it). Every INVITE still being set up (an agent ringing, ring-all
forks, an agent answered while its flow-id message is set up, a media or message leg not answered yet;
checkpointed when it was sent) is taken up again and CANCELled (`sippy/resume.cancel_invite`): nothing
is left ringing; one answered meanwhile gets ACK and BYE. An agent hearing its flow-id message (both
its dialogs confirmed, checkpointed as `agent_whisper` and `message`) gets BYE, and so does the
message's server; the agent is freed by the call's end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog

from callcenter_sip_edge.call import Call
from callcenter_sip_edge.checkpoint import AdoptedCall
from callcenter_sip_edge.legs import AgentLeg, CallerInfo, Phase
from callcenter_sip_edge.sippy import dialog
from callcenter_sip_edge.sippy.resume import answer_caller, cancel_invite, forget_dialog, resume_dialog

if TYPE_CHECKING:
    from callcenter_sip_edge.router import CallRouter

log = structlog.get_logger(__name__)

ENDED_REASON = "edge_restarted"


def adopt(router: CallRouter, calls: Iterable[AdoptedCall], reason: str = ENDED_REASON) -> None:
    """Carry on the talking calls of a previous process (or of a lost peer of this edge's address
    group, `reason` edge_lost), end the others (`call_ended`)."""
    adopted = ended = 0
    for record in calls:
        _cancel_invites(router, record)
        _answer_caller(router, record)
        if not record.live:
            # ended by the dispatchers meanwhile (edge_lost): its CDR is written, only its peers may
            # still be talking: rebuild the legs to send each a BYE
            log.info("call.adoption_skipped", call_id=record.call_id, reason="ended_meanwhile")
            _hang_up_legs(router, record)
            continue
        if record.legs is not None and record.agent_id and "agent" in record.legs:
            if _resume(router, record):
                adopted += 1
                continue
        else:
            _hang_up_legs(router, record)
        log.info("call.ended", call_id=record.call_id, by="edge", reason=reason, phase=record.phase)
        router.emit("call_ended", record.call_id, {"by": "edge", "reason": reason, "code": None})
        ended += 1
    log.info("edge.calls_adopted", adopted=adopted, ended=ended)


def _resume(router: CallRouter, record: AdoptedCall) -> bool:
    """Rebuild a talking call; False (every leg rebuilt so far gets BYE) if a leg cannot be."""
    assert record.legs is not None and record.agent_id is not None
    info = CallerInfo(flow=record.flow, caller_user=record.caller, caller_uri="", caller_display=None,
                      sip_call_id=record.sip_call_id, source="")
    call = Call(router=router, call_id=record.call_id, info=info)
    leg = AgentLeg(ua=None, uri="", offer_id=record.offer_id or "", agent_id=record.agent_id, early_offer=False,
                   phase=Phase.TALKING)
    try:
        call.caller = resume_dialog(router.sip_config, record.legs["caller"], call.event_cb(call.caller_events))
        call.caller_answered = True
        leg.ua = resume_dialog(router.sip_config, record.legs["agent"], call.event_cb(call.agent_legs))
    except Exception:
        log.exception("call.adoption_failed", call_id=record.call_id)
        call.ended = True
        for ua in (call.caller, leg.ua):
            dialog.hang_up(ua)
        return False
    call.agent = leg
    router.calls[call.call_id] = call
    if record.timers:
        call.session_timers.adopt(record.timers, call.caller, leg.ua)   # RFC 4028 goes on as before
    log.info("call.adopted", call_id=call.call_id, agent_id=record.agent_id)
    return True


def _hang_up_legs(router: CallRouter, record: AdoptedCall) -> None:
    """BYE to each checkpointed leg of a call that is over or cannot be carried on (no report here)."""
    for name in ("caller", "agent", "media", "agent_whisper", "message"):
        snap = (record.legs or {}).get(name)
        if snap is None:
            continue
        try:
            dialog.hang_up(resume_dialog(router.sip_config, snap, _ignore))
        except Exception:
            log.exception("call.adoption_failed", call_id=record.call_id, leg=name)


def disown(router: CallRouter, ended: Iterable[str], handed: Iterable[str]) -> None:
    """This edge was declared lost meanwhile: hang up the calls the dispatchers ended (their CDR
    says edge_lost; nobody sent their legs a BYE) and forget, without a word, those a peer adopted
    (its BYEs and reports are the only ones). Runs in a SIP turn."""
    for call_id in ended:
        call = router.calls.get(call_id)
        if call is not None and not call.ended:
            log.info("call.disowned", call_id=call_id, reason="ended_meanwhile")
            call.end(by="edge", reason="edge_lost")   # its call_ended is a no-op at the dispatcher
    for call_id in handed:
        call = router.calls.get(call_id)
        if call is None:
            continue
        log.info("call.disowned", call_id=call_id, reason="adopted_by_peer")
        call.ended = True   # its legs' events and timers are ignored from now on
        for ua in _uas(call):
            forget_dialog(ua)
        router.forget(call_id)


def _uas(call: Call) -> list[object]:
    """Every leg of a call: caller, media (answered or being set up), agent, its message, forks."""
    legs = [call.media, call.media_pending, call.agent, call.agent.whisper if call.agent else None,
            *call.forks.legs]
    return [call.caller, *(leg.ua for leg in legs if leg is not None)]


def _cancel_invites(router: CallRouter, record: AdoptedCall) -> None:
    """CANCEL each INVITE the dead process left in set-up (ACK and BYE if it is answered)."""
    for snap in record.pending:
        try:
            cancel_invite(router.sip_config, snap, _ignore)
            log.info("call.invite_cancelled", call_id=record.call_id, next_hop=snap.get("next_hop"))
        except Exception:
            log.exception("call.adoption_failed", call_id=record.call_id, leg="pending_invite")


def _answer_caller(router: CallRouter, record: AdoptedCall) -> None:
    """A caller whose INVITE the dead process had not answered gets its final response (500 with
    Retry-After) instead of waiting in 100 Trying for its own timer."""
    if record.uas is None:
        return
    try:
        to = answer_caller(router.sip_config, record.uas)
        log.info("call.caller_answered_after_restart", call_id=record.call_id, to=f"{to[0]}:{to[1]}")
    except Exception:
        log.exception("call.adoption_failed", call_id=record.call_id, leg="caller_invite")


def _ignore(event: object, ua: object) -> None:
    """The event callback of a leg that is only hung up."""
