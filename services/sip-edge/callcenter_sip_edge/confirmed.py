"""The checkpoint of a talking call at each confirmed change (see `checkpoint.py` for where it goes).

Reads: the call's caller leg and agent leg (sippy UAs, through `sippy/resume.dialog_snapshot`).
Writes: one `checkpoint` fact, which the service stores in Redis with the call's reports.

Runs on the SIP thread; called once per confirmed change: the caller answered by a media leg
(`media`), the agent connected (`agent`), an offer relayed between caller and agent answered
(`offers`). A talking call's checkpoint is what a restarted edge carries on with; one of a caller on
media lets it send both sides a BYE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callcenter_sip_edge.facts import CHECKPOINT_KIND
from callcenter_sip_edge.legs import Phase
from callcenter_sip_edge.sippy.resume import dialog_snapshot

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

def checkpoint(call: Call) -> None:
    """Hand the call's confirmed legs to the service (a few str() of headers: cheap): caller and agent
    once they talk (with `agent_id`), else the caller and the media leg it hears."""
    if call.ended or not call.caller_answered:
        return
    agent = call.agent
    if agent is not None and agent.ua is not None and agent.phase is Phase.TALKING:
        call.emit(CHECKPOINT_KIND, agent_id=agent.agent_id, offer_id=agent.offer_id,
                  legs={"caller": dialog_snapshot(call.caller), "agent": dialog_snapshot(agent.ua)})
        return
    media = call.media
    if media is not None and media.ua is not None:
        call.emit(CHECKPOINT_KIND, agent_id=None, offer_id=None,
                  legs={"caller": dialog_snapshot(call.caller), "media": dialog_snapshot(media.ua)})
