"""Shared fixtures: one private redis-server per test session, a clean database per test, and a
temporary PostgreSQL server per session for the tests that need real SQL behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from callcenter_dev.postgres import PostgresServer, find_bindir
from callcenter_dev.servers import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


# -- PostgreSQL: only where SQL behaviour matters (idempotent inserts, constraints, types) ----------

@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    if find_bindir() is None:
        pytest.skip("PostgreSQL is not installed: no initdb/pg_ctl/postgres on PATH, in $CC_PG_BINDIR "
                    "or in /usr/lib/postgresql/*/bin")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server: PostgresServer) -> str:
    """SQLAlchemy URL of an empty database on the session's PostgreSQL server (not migrated)."""
    return pg_server.create_database("callcenter")
