"""/v1/flows: flow provisioning (SQL + the Redis cache, see callcenter_api.provisioning)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select

from callcenter.db.models import Flow
from callcenter_api import provisioning
from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import FLOW_ID_PATTERN, FlowIn, FlowOut

router = APIRouter(prefix="/v1/flows", tags=["flows"])

FlowId = Annotated[str, Path(pattern=FLOW_ID_PATTERN, description="flow id: [A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")]


@router.get("")
async def list_flows(services: ServicesDep) -> list[FlowOut]:
    flows = await services.sql(lambda s: list(s.scalars(select(Flow).order_by(Flow.id))))
    return [FlowOut.model_validate(f) for f in flows]


@router.get("/{flow_id}")
async def get_flow(flow_id: FlowId, services: ServicesDep) -> FlowOut:
    flow = await services.sql(lambda s: s.get(Flow, flow_id))
    if flow is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"flow {flow_id!r} does not exist")
    return FlowOut.model_validate(flow)


@router.put("/{flow_id}", responses={201: {"description": "created"}, 200: {"description": "replaced"}})
async def put_flow(flow_id: FlowId, body: FlowIn, services: ServicesDep, response: Response) -> FlowOut:
    """Create or replace a flow; every field not given gets its default (see the schema)."""
    if body.overflow_flow == flow_id:
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "overflow_flow"),
                                       "msg": "overflow_flow cannot be the flow itself", "input": flow_id}])
    flow, created = await provisioning.put_flow(services, flow_id, body.model_dump())
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return FlowOut.model_validate(flow)


@router.delete("/{flow_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={409: {"description": "calls are waiting in the flow"}})
async def delete_flow(flow_id: FlowId, services: ServicesDep) -> None:
    if not await provisioning.delete_flow(services, flow_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"flow {flow_id!r} does not exist")
