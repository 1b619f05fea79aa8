"""How the tests call the api, always with authentication on: its ASGI app in-process (lifespan and
all) with an httpx client that carries an admin API key (`running`), or the api as a real process
with a first admin key made by `callcenter-api create-key` (`api_process`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from callcenter.settings import ApiSettings
from callcenter_api import keys
from callcenter_api.app import create_app
from callcenter_api.deps import Services
from callcenter_dev.processes import ServiceProcess, create_api_key
from callcenter_dev.servers import RedisServer, free_port


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


@dataclass
class ApiProcess:
    url: str
    process: ServiceProcess
    admin: str
    db: Path
    env: dict[str, str]

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=bearer(key) if key else {}, timeout=10)

    def key(self, role: str, agent_id: str | None = None, name: str = "t") -> str:
        """A new key made through the api with the admin key."""
        with self.client(self.admin) as c:
            r = c.post("/v1/keys", json={"name": name, "role": role, "agent_id": agent_id})
            assert r.status_code == 201, r.text
            return str(r.json()["key"])


@contextmanager
def api_process(redis_server: RedisServer, workdir: Path, env: dict[str, str] | None = None) -> Iterator[ApiProcess]:
    db = workdir / "cc.sqlite3"
    port = free_port()
    full = {"CC_REDIS_URL": redis_server.url, "CC_TENANT": "auth", "CC_DATABASE_URL": f"sqlite:///{db}",
            "CC_API_PORT": str(port), **(env or {})}
    admin = create_api_key(full, name="ops")
    process = ServiceProcess("api", full, health_url=f"http://127.0.0.1:{port}/healthz").start()
    try:
        yield ApiProcess(url=f"http://127.0.0.1:{port}", process=process, admin=admin, db=db, env=full)
    finally:
        process.stop()
