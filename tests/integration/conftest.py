"""Fixtures of the api tests that run its ASGI app in-process: the settings of a module's tenant
(its `TENANT`) on a temporary SQLite file, and an authenticated client of the running app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from api_client import running

from callcenter.settings import ApiSettings
from callcenter_dev.servers import RedisServer


@pytest.fixture
def settings(request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path) -> ApiSettings:
    tenant = getattr(request.module, "TENANT", "api")
    return ApiSettings(redis_url=redis_server.url, tenant=tenant, database_url=f"sqlite:///{tmp_path / 'cc.sqlite3'}")


@pytest.fixture
async def api(redis: aioredis.Redis, settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(settings) as (client, _app):
        yield client
