"""The clients one worker process uses (SQL engine, sessions, sync Redis, HTTP), made on first use and
kept for the life of the process; the settings are read once by `callcenter_jobs.app`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import httpx
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from callcenter.db.engine import make_engine
from callcenter.redis import connect_sync
from callcenter.settings import JobsSettings
from callcenter.store.keys import Keys


@dataclass(frozen=True)
class Runtime:
    """Settings and clients of this process."""

    settings: JobsSettings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    keys: Keys
    # one client per process, shared by its threads: a new client per request would build an SSL
    # context and a connection each time (about 40 ms of CPU per delivery, measured)
    http: httpx.Client


@cache
def runtime() -> Runtime:
    settings = JobsSettings()
    engine = make_engine(settings.database_url)
    return Runtime(settings, engine, sessionmaker(engine, expire_on_commit=False),
                   connect_sync(settings.redis_url), Keys(settings.tenant),
                   httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False))
