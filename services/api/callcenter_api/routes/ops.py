"""Probes (/healthz, /readyz), metrics (/metrics) and management (/v1/reload: re-seed the Redis cache
from SQL)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from callcenter import metrics
from callcenter_api import provisioning
from callcenter_api.deps import ServicesDep, require_principal
from callcenter_api.errors import problem
from callcenter_api.schemas import ReloadOut

probes = APIRouter(tags=["probes"])
management = APIRouter(prefix="/v1", tags=["management"], dependencies=[Depends(require_principal)])
metrics_route = APIRouter(dependencies=[Depends(require_principal)])


@probes.get("/healthz", name="healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness): no dependency is checked."""
    return {"status": "ok"}


@probes.get("/readyz", name="readyz", responses={503: {"description": "Redis or SQL unreachable"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Redis answers PING and SQL answers SELECT 1 (readiness)."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(services.redis.ping(), timeout=2)
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported
        checks["redis"] = f"error: {exc!r}"

    def select_one() -> None:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(asyncio.to_thread(select_one), timeout=5)
        checks["sql"] = "ok"
    except Exception as exc:
        checks["sql"] = f"error: {exc!r}"
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:  # a problem (RFC 9457) like every error, with the checks as extension members
        return problem(status.HTTP_503_SERVICE_UNAVAILABLE, "not-ready", f"{', '.join(failed)} unreachable",
                       extensions=checks)
    return JSONResponse({"status": "ok", **checks})


@metrics_route.get("/metrics", name="metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: the api process's own and the tenant's state, read from Redis now
    (`callcenter.metrics.TenantState`). Admin keys only: flow and agent figures are the tenant's."""
    state, registry = request.app.state.tenant_metrics
    await state.refresh()
    return Response(metrics.exposition(registry), media_type=metrics.CONTENT_TYPE)


@management.post("/reload", name="reload")
async def reload(services: ServicesDep,
                 prune: Annotated[bool, Query(description="also drop cache entries unknown to SQL")] = False,
                 ) -> ReloadOut:
    """Re-seed the Redis cache of flows and agents from SQL (the reference module's `cc_reload`)."""
    return ReloadOut(**await provisioning.reseed(services, prune=prune))
