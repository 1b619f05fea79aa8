"""Shared fixtures: one private redis-server per test session, a clean database per test, and a
temporary PostgreSQL and MariaDB server per session for the tests that need real SQL behaviour;
`sql_url` runs a test once on each of the three SQL backends."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from callcenter_dev.mariadb import MariaDbServer, find_server
from callcenter_dev.postgres import PostgresServer, find_bindir
from callcenter_dev.redis_topologies import RedisClusterServers, RedisSentinelServers
from callcenter_dev.servers import RedisServer

Topology = TypeVar("Topology", RedisClusterServers, RedisSentinelServers)


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


# -- Redis Cluster and Sentinel: for the tests of those topologies, one per test module -------------

def _running(servers: Topology) -> Iterator[Topology]:
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of 3 masters and 3 replicas (redis-server processes on loopback)."""
    yield from _running(RedisClusterServers())


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinelServers]:
    """A master, a replica and three sentinels (redis-server processes on loopback)."""
    yield from _running(RedisSentinelServers())


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


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDbServer]:
    if find_server() is None:
        pytest.skip("MariaDB is not installed: no mariadbd on PATH, in $CC_MARIADB_BINDIR or /usr/sbin "
                    "(scripts/bootstrap.sh --with-mariadb)")
    server = MariaDbServer().start()
    yield server
    server.stop()


SQL_BACKENDS = ["sqlite", "postgresql", "mariadb"]
_databases = itertools.count(1)


@pytest.fixture(params=SQL_BACKENDS)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLAlchemy URL of a new, empty database (not migrated), once per SQL backend: a SQLite file,
    a database on the session's PostgreSQL server, a database on the session's MariaDB server."""
    name = f"t{next(_databases)}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.sqlite3')}"
    server: PostgresServer | MariaDbServer = request.getfixturevalue(
        "pg_server" if request.param == "postgresql" else "mariadb_server")
    return server.create_database(name)
