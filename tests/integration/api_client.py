"""The api's ASGI app run in-process (lifespan and all) with an httpx client that carries an admin
API key: the one way the integration tests call the api (authentication stays on)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from callcenter.settings import ApiSettings
from callcenter_api import keys
from callcenter_api.app import create_app
from callcenter_api.deps import Services


async def new_key(services: Services, role: str = "admin", agent_id: str | None = None, name: str = "tests") -> str:
    """A new API key straight in SQL (as `callcenter-api create-key` does)."""
    return await services.sql(lambda s: keys.create(s, name=name, role=role, agent_id=agent_id)[1])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def running(settings: ApiSettings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        key = await new_key(app.state.services)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                     headers=bearer(key)) as client:
            yield client, app
