"""The checkpoint of a talking call at each confirmed change (see `checkpoint.py` for where it goes).

Reads: the call's caller leg and agent leg (sippy UAs, through `sippy/resume.dialog_snapshot`).
Writes: one `checkpoint` fact, which the service stores in Redis with the call's reports.

Runs on the SIP thread; called once per confirmed change: the agent connected (`agent`), an
offer relayed between caller and agent answered (`offers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callcenter_sip_edge.legs import Phase
from callcenter_sip_edge.sippy.resume import dialog_snapshot

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

CHECKPOINT_KIND = "checkpoint"   # the fact kind of a dialog checkpoint (no report)


def checkpoint(call: Call) -> None:
    """Hand a talking call's legs to the service (a few str() of headers: cheap)."""
    agent = call.agent
    if call.ended or agent is None or agent.ua is None or agent.phase is not Phase.TALKING:
        return
    call.emit(CHECKPOINT_KIND, agent_id=agent.agent_id, offer_id=agent.offer_id,
              legs={"caller": dialog_snapshot(call.caller), "agent": dialog_snapshot(agent.ua)})
