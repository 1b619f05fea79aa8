"""/v1/stats and /v1/service-level: statistics kept by the Lua steps, read from Redis (no SQL).

The reads and the arithmetic are in `callcenter.store.reads`; every field is described in the
response models (`callcenter_api.schemas`), with the reference module's statistic names.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import FLOW_ID_PATTERN, ServiceLevelOut, StatsOut, StatsResetOut

router = APIRouter(prefix="/v1", tags=["statistics"])


@router.get("/stats", name="get")
async def get_stats(services: ServicesDep) -> StatsOut:
    """Counters since the last reset and live figures: in total, per flow and per agent."""
    return StatsOut.model_validate(await services.reads.stats())


@router.post("/stats/reset", name="reset")
async def reset_stats(services: ServicesDep) -> StatsResetOut:
    """Reset the counters (global, per flow, per agent); the on-hold gauge and the recent handle time
    used for estimated waits are kept (the reference's `reset_stats`). Service level is not reset:
    its one-minute buckets age out by themselves."""
    now = services.store.clock()
    await services.store.stats_reset(now=now)
    return StatsResetOut(reset_ms=now)


@router.get("/service-level", name="service_level", responses={404: {"description": "unknown flow"}})
async def get_service_level(
    services: ServicesDep,
    flow_id: Annotated[str | None, Query(pattern=FLOW_ID_PATTERN, description="one flow; default every flow")] = None,
) -> list[ServiceLevelOut]:
    """Per flow, over the last 1, 15 and 60 minutes: calls offered, answered, answered within T,
    abandoned, abandoned within T, and the service level 100 * answered_in_t / (offered -
    abandoned_in_t) (null when that denominator is 0)."""
    reads = services.reads
    if flow_id is not None:
        if not await reads.has_flow(flow_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"flow {flow_id!r} does not exist")
        flow_ids = [flow_id]
    else:
        flow_ids = await reads.flow_ids()
    levels = await reads.service_level(flow_ids, services.store.clock())
    return [ServiceLevelOut.model_validate(level) for level in levels]
