"""The api's app factory: `create_app(settings)`.

Every route but the probes needs an API key or token (`callcenter_api.auth`).
The lifespan migrates the SQL schema (`callcenter.db.engine.upgrade`), opens the Redis client and
the Store, and re-seeds the Redis cache of flows and agents from SQL, so the api works against an
empty Redis. Nothing is opened at import time and no settings are read from a module global.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.orm import sessionmaker

from callcenter.db.engine import make_engine, upgrade
from callcenter.metrics import tenant_registry
from callcenter.redis import REDIS_DOWN, connect
from callcenter.settings import ApiSettings
from callcenter.store import Store
from callcenter_api import errors, openapi, provisioning
from callcenter_api.auth import AuthError, auth_problem
from callcenter_api.body_limit import BodyLimit
from callcenter_api.deps import Services, require_principal
from callcenter_api.idempotency import Idempotency
from callcenter_api.routes import (
    agents,
    cdrs,
    config,
    dead_letters,
    events,
    exports,
    flows,
    keys,
    live,
    ops,
    reports,
    stats,
    webhooks,
)

log = structlog.get_logger(__name__)


async def _reseed_when_redis_is_up(services: Services) -> None:
    delay = 0.1
    while True:
        await asyncio.sleep(delay)
        try:
            await provisioning.reseed(services)
            return
        except REDIS_DOWN as exc:
            log.warning("api.redis_unavailable", error=repr(exc), retry_in_s=delay)
            delay = min(delay * 2, 5.0)


def create_app(settings: ApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        redis = connect(settings.redis_url)
        try:
            await asyncio.to_thread(upgrade, engine)
            services = Services(settings=settings, redis=redis, store=Store(redis, settings.tenant),
                                engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
            app.state.services = services
            # GET /metrics: the process's metrics and the tenant's state read from Redis per scrape
            app.state.tenant_metrics = tenant_registry(redis, settings.tenant)
            # an empty Redis (first start, restart without persistence) gets flows and agents back;
            # a Redis not up yet is waited for in the background (/readyz says 503 meanwhile)
            seeding: asyncio.Task[None] | None = None
            try:
                await provisioning.reseed(services)
            except REDIS_DOWN as exc:
                log.warning("api.redis_unavailable", error=repr(exc))
                seeding = asyncio.create_task(_reseed_when_redis_is_up(services))
            if settings.api_auth == "off":
                log.warning("api.auth_off", note="CC_API_AUTH=off: every caller is an admin (local demos only)")
            log.info("api.started", tenant=settings.tenant, host=settings.api_host, port=settings.api_port)
            yield
            if seeding is not None:
                seeding.cancel()
            await services.feed.close()
            await services.auth.close()
        finally:
            await redis.aclose()
            engine.dispose()
            log.info("api.stopped")

    app = FastAPI(title="callcenter api", version="1", lifespan=lifespan,
                  generate_unique_id_function=openapi.operation_id,
                  description="Provisioning, agents (login, pause, release), live calls and queues, "
                              "external dispatching, call-handling parameters, statistics, service level, CDRs.")
    app.include_router(ops.probes)
    app.include_router(ops.management)
    app.include_router(ops.metrics_route)
    # every /v1 resource goes through authentication and the role policy (callcenter_api.auth)
    auth = [Depends(require_principal)]
    for router in (flows.router, agents.router, live.router, cdrs.router, config.router, stats.router,
                   keys.router, events.router, dead_letters.router, webhooks.router, reports.router, exports.router):
        app.include_router(router, dependencies=auth)
    if settings.api_cors_origins.strip():  # no CORS headers at all unless origins are configured
        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in settings.api_cors_origins.split(",")
                                                          if o.strip()],
                           allow_methods=["*"], allow_headers=["Authorization", "Content-Type", "Last-Event-ID",
                                                                 "Idempotency-Key", "If-Match"],
                           expose_headers=["ETag", "Idempotent-Replayed"])

    errors.install(app)  # every error as application/problem+json (RFC 9457)
    openapi.install(app)  # operation ids, and every error each operation can answer
    app.add_middleware(Idempotency)  # inside BodyLimit: it reads a capped body
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_exception_handler(AuthError, auth_problem)

    return app
