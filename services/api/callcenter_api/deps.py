"""What a request handler needs: the clients opened in the app's lifespan, and the auth hook.

`require_principal` authenticates the caller (`callcenter_api.auth`) and checks the operation
against the role policy; handlers that filter by caller take `PrincipalDep` (same, cached per request).

`Services` is created by `create_app`'s lifespan and kept on `app.state`; handlers get it through
the `services` dependency. SQL work is synchronous SQLAlchemy run in a worker thread
(`Services.sql`), so a slow database never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from callcenter.settings import ApiSettings
from callcenter.store import Store
from callcenter.store.reads import Reads
from callcenter_api.auth import Authenticator, Principal, authorize
from callcenter_api.feed import EventHub

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
    auth: Authenticator = field(init=False)
    feed: EventHub = field(init=False)

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.settings, self.sql)
        self.feed = EventHub(self.redis, self.store.keys.events)

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


async def require_principal(request: Request, services: ServicesDep) -> Principal:
    """Authentication and authorisation of every /v1 route: the caller's key or token, then the
    role policy of the operation (`callcenter_api.auth.POLICY`). Raises AuthError (401/403)."""
    principal = await services.auth.principal(request)
    authorize(principal, request)
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]
