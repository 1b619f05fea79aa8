"""/v1/calls and /v1/queues: live views read straight from Redis (no SQL).

Reads `cc:{t}:calls` and the call hashes, `cc:{t}:flows`, the flow hashes and the per-flow
queues `cc:{t}:queue:<flow>` and `cc:{t}:chatq:<flow>` (sorted sets, lowest score served first). One write: the external
dispatch of a waiting call to an agent (`dispatch_call.lua`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from callcenter.store import RC
from callcenter.store.codes import NOT_OK, refuse_on
from callcenter_api import paging, provisioning
from callcenter_api.auth import forbidden
from callcenter_api.deps import PrincipalDep, ServicesDep
from callcenter_api.schemas import CALL_ID_PATTERN, CallOut, DispatchIn, DispatchOut, Page, QueueOut

router = APIRouter(prefix="/v1")

CallId = Annotated[str, Path(pattern=CALL_ID_PATTERN, description="call id (the sip-edge's: 32 hex digits)")]


def _call_order(call: CallOut) -> paging.SortKey:
    return [call.received_ms or 0, call.call_id]


@router.get("/calls", tags=["calls"], name="list")
async def list_calls(services: ServicesDep, principal: PrincipalDep, cursor: paging.Cursor = None,
                     limit: paging.Limit = paging.DEFAULT_LIMIT) -> Page[CallOut]:
    """Calls not yet ended, oldest first (an agent key: its own agent's calls only)."""
    after = paging.decode(cursor, (int, str))
    calls = [CallOut.model_validate(call) for call in await services.reads.calls()]
    if principal.role == "agent":
        calls = [call for call in calls if call.agent_id == principal.agent_id]
    items, following = paging.page_in_memory(calls, _call_order, after, limit)
    return Page(items=items, next_cursor=following)


@router.get("/calls/{call_id}", tags=["calls"], name="get")
async def get_call(call_id: CallId, services: ServicesDep, principal: PrincipalDep) -> CallOut:
    """A live call, or an ended one while its hash is kept (ended_call_ttl_s, one hour by default).
    An agent key sees only calls of its own agent."""
    call = await services.reads.call(call_id)
    if call is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call_id!r} does not exist (or ended long ago)")
    out = CallOut.model_validate(call)
    if principal.role == "agent" and out.agent_id != principal.agent_id:
        raise forbidden("other-agent", f"call {call_id!r} is not a call of agent {principal.agent_id!r}")
    return out


@router.post("/calls/{call_id}/dispatch", tags=["calls"], name="dispatch",
             responses={404: {"description": "unknown (or ended) call, unknown agent"},
                        409: {"description": "the call is not queued, the agent is not free or lacks the skill"}})
async def dispatch_call(call_id: CallId, body: DispatchIn,
                        services: ServicesDep) -> DispatchOut:
    """Offer a waiting call to a free agent holding the flow's skill (the reference's
    `dispatch_call_to_agent`): meant for external dispatching (`internal_dispatching` off in
    `PATCH /v1/config`), allowed either way. The agent rings as with an internal offer."""
    res = await services.store.dispatch_call(call_id, body.agent_id)
    if res.rc is RC.NOT_FOUND and res.detail == "agent" and await provisioning.recache_agent(services, body.agent_id):
        res = await services.store.dispatch_call(call_id, body.agent_id)  # the cache had lost the agent
    missing = (f"agent {body.agent_id!r} does not exist" if res.detail == "agent"
               else f"call {call_id!r} does not exist (or has ended)")
    refuse_on(res, RC.NOT_FOUND, message=missing)
    refuse_on(res, *NOT_OK,
              message=f"call {call_id!r} cannot be dispatched to agent {body.agent_id!r}: {res.detail}")
    call = await services.reads.call(call_id)
    fields = call.fields if call else {}
    return DispatchOut(call_id=call_id, agent_id=body.agent_id, state=fields.get("state", "offered"),
                       offer_id=fields.get("offer") or None)


@router.get("/queues", tags=["queues"], name="list")
async def list_queues(services: ServicesDep,
                      limit: Annotated[int, Query(ge=0, le=10_000, description="call ids per queue")] = 100,
                      ) -> list[QueueOut]:
    """Every flow of the cache with its waiting calls, next served first."""
    return [QueueOut.model_validate(queue) for queue in await services.reads.queues(limit)]
