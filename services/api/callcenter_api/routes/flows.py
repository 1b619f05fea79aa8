"""/v1/flows: flow provisioning (SQL + the Redis cache, see callcenter_api.provisioning).

A flow's GET and PUT answer its `ETag`; a PUT with `If-Match` is refused (412) when the flow changed
since (`callcenter_api.versions`). The list is paged by cursor (`callcenter_api.paging`), by id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status
from fastapi.exceptions import RequestValidationError

from callcenter.db.models import Flow
from callcenter_api import paging, provisioning
from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import FLOW_ID_PATTERN, FlowIn, FlowOut, Page
from callcenter_api.versions import ETAG_HEADER, IfMatch, etag, precondition

router = APIRouter(prefix="/v1/flows", tags=["flows"])

FlowId = Annotated[str, Path(pattern=FLOW_ID_PATTERN, description="flow id: [A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")]


@router.get("", name="list")
async def list_flows(services: ServicesDep, cursor: paging.Cursor = None,
                     limit: paging.Limit = paging.DEFAULT_LIMIT) -> Page[FlowOut]:
    """Flows by id."""
    query = paging.by_id(Flow, cursor, limit)
    flows = await services.sql(lambda s: [FlowOut.model_validate(f) for f in s.scalars(query)])
    return Page(items=flows[:limit], next_cursor=paging.next_cursor(flows, limit, lambda f: [f.id]))


@router.get("/{flow_id}", name="get", responses={200: {"headers": ETAG_HEADER}})
async def get_flow(flow_id: FlowId, services: ServicesDep, response: Response) -> FlowOut:
    flow = await services.sql(lambda s: s.get(Flow, flow_id))
    if flow is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"flow {flow_id!r} does not exist")
    response.headers["ETag"] = etag(flow)
    return FlowOut.model_validate(flow)


@router.put("/{flow_id}", name="update",
            responses={201: {"description": "created", "headers": ETAG_HEADER},
                       200: {"description": "replaced", "headers": ETAG_HEADER},
                       409: {"description": "refused by the flow's provisioning step"},
                       412: {"description": "If-Match does not name the flow's current version"}})
async def put_flow(flow_id: FlowId, body: FlowIn, services: ServicesDep, response: Response,
                   if_match: IfMatch = None) -> FlowOut:
    """Create or replace a flow; every field not given gets its default (see the schema). With
    If-Match, only if the flow is still at that version (its ETag); without, unconditionally."""
    if body.overflow_flow == flow_id:
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "overflow_flow"),
                                       "msg": "overflow_flow cannot be the flow itself", "input": flow_id}])
    flow, created = await provisioning.put_flow(services, flow_id, body.model_dump(),
                                                precondition(if_match, f"flow {flow_id!r}"))
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["ETag"] = etag(flow)
    return FlowOut.model_validate(flow)


@router.delete("/{flow_id}", name="delete", status_code=status.HTTP_204_NO_CONTENT,
               responses={409: {"description": "calls are waiting in the flow"}})
async def delete_flow(flow_id: FlowId, services: ServicesDep) -> None:
    if not await provisioning.delete_flow(services, flow_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"flow {flow_id!r} does not exist")
