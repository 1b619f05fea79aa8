"""The checkpoint of a call at each confirmed change and each INVITE it sends (see `checkpoint.py`
for where it goes).

Reads: the call's caller leg, agent leg, ring-all forks, media leg being set up and flow-id message
leg (sippy UAs, through `sippy/resume.dialog_snapshot` and `invite_snapshot`).
Writes: one `checkpoint` fact, which the service stores in Redis with the call's reports.

Runs in sippy's turns; called once per confirmed change: the caller answered by a media leg
(`media`), the agent connected (`agent`), an offer relayed between caller and agent answered
(`offers`); once per INVITE sent (`Call.invite`: a ring, a fork, a media leg, a flow-id message);
once per leg that stopped setting up without a confirmed change (`Call.emit` of `agent_failed` or
`media_failed`, the forks cancelled). A talking call's checkpoint is what a restarted edge carries
on with; one of a caller on media lets it send both sides a BYE; the INVITEs in set-up (`pending`)
let it CANCEL them, so that no phone is left ringing (`adoption.py`). Also, once per call, the
caller's INVITE not answered yet (`arrived`, `uas`: the caller gets a final response from a
restarted edge) and its end (`caller_answered`: our 200 went out, that INVITE is answered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from callcenter_sip_edge.facts import CHECKPOINT_KIND
from callcenter_sip_edge.legs import Phase
from callcenter_sip_edge.sippy.resume import caller_snapshot, dialog_snapshot, invite_snapshot

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

# the reports after which a leg may have stopped setting up with no other checkpoint
SETTLING_REPORTS = frozenset({"agent_failed", "media_failed"})
# the agent's dialog is up (its INVITE answered and ACKed) but it is not talking to the caller yet
WHISPER_PHASES = frozenset({Phase.WHISPER, Phase.REBRIDGING})


def checkpoint(call: Call, sent: Any = None) -> None:
    """Hand the call's confirmed legs to the service (a few str() of headers: cheap): caller and agent
    once they talk (with `agent_id`), else the caller and the media leg it hears, and the agent and
    its message's server while it hears its flow-id message; and the INVITEs still being set up
    (`sent`: a UA whose INVITE has just gone out, not yet attached to its leg)."""
    if call.ended:
        return
    data: dict[str, Any] = {"pending": pending_invites(call, sent)}
    agent = call.agent
    if not call.caller_answered:
        pass   # no confirmed leg yet: only the pending INVITEs
    elif agent is not None and agent.ua is not None and agent.phase is Phase.TALKING:
        data.update(agent_id=agent.agent_id, offer_id=agent.offer_id,
                    legs={"caller": dialog_snapshot(call.caller), "agent": dialog_snapshot(agent.ua)},
                    timers=call.session_timers.snapshot())
    elif call.media is not None and call.media.ua is not None:
        data.update(agent_id=None, offer_id=None,
                    legs={"caller": dialog_snapshot(call.caller), "media": dialog_snapshot(call.media.ua)})
    if agent is not None and agent.ua is not None and agent.phase in WHISPER_PHASES:
        # the agent answered into its flow-id message (whatever the caller's state): a restarted
        # edge sends the agent and the message's server a BYE instead of leaving them connected
        legs = dict(data.get("legs") or {}, agent_whisper=dialog_snapshot(agent.ua))
        if agent.phase is Phase.WHISPER and agent.whisper is not None and agent.whisper.ua is not None:
            legs["message"] = dialog_snapshot(agent.whisper.ua)
        data["legs"] = legs
    call.emit(CHECKPOINT_KIND, **data)


def pending_invites(call: Call, sent: Any = None) -> list[dict[str, Any]]:
    """The INVITEs of this call that have no final response yet (or whose 2xx we have not ACKed):
    the agent's (ringing, or answered while its flow-id message is set up), each ring-all fork's,
    the media leg being set up, the flow-id message leg; each once, `sent` included."""
    uas: list[Any] = []
    agent = call.agent
    if agent is not None:
        uas.append(agent.ua)
        if agent.whisper is not None:
            uas.append(agent.whisper.ua)
    uas.extend(leg.ua for leg in call.forks.legs)
    if call.media_pending is not None:
        uas.append(call.media_pending.ua)
    if sent is not None and not any(ua is sent for ua in uas):
        uas.append(sent)
    snaps = (invite_snapshot(ua) for ua in uas if ua is not None)
    return [snap for snap in snaps if snap is not None]


def arrived(call: Call) -> None:
    """The caller's INVITE came (after its `call_arrived`): what answers it from a restarted edge
    (`sippy/resume.caller_snapshot`), stored in the same write as the arrival."""
    snap = caller_snapshot(call.caller)
    if snap is not None:
        call.emit(CHECKPOINT_KIND, uas=snap)


def caller_answered(call: Call) -> None:
    """Our 200 went to the caller: its INVITE needs no answer from a restarted edge any more."""
    call.emit(CHECKPOINT_KIND, uas=None)
