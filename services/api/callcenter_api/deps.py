"""What a request handler needs: the clients opened in the app's lifespan, and the auth hook.

`Services` is created by `create_app`'s lifespan and kept on `app.state`; handlers get it through
the `services` dependency. SQL work is synchronous SQLAlchemy run in a worker thread
(`Services.sql`), so a slow database never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from callcenter.settings import ApiSettings
from callcenter.store import Store
from callcenter.store.reads import Reads

T = TypeVar("T")


@dataclass
class Services:
    """The clients a request may use (settings, Redis, SQL sessions, the Lua steps, the typed reads),
    made once in the lifespan."""

    settings: ApiSettings
    redis: Redis
    store: Store
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def reads(self) -> Reads:
        """The typed read views of this tenant's Redis state."""
        return Reads(self.redis, self.store.keys)

    async def sql(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` in a thread inside one transaction, committed when it returns."""

        def run() -> T:
            with self.sessions.begin() as session:
                return work(session)

        return await asyncio.to_thread(run)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def require_principal() -> None:
    """Authentication and authorisation hook of every /v1 route: nothing yet (open API).

    Replace this with the API-key / token check (it can take the Request and `get_services`);
    the routers already depend on it, so no route has to change.
    """
    return None
