"""/v1/agents/{id}/sip: an agent's SIP password kept as HA1s only (SQL and its Redis cache), never
shown; `registration_required` and the login it refuses; the cache put back after Redis lost it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from api_client import running
from problems import problem
from sqlalchemy import text

from callcenter.db.engine import make_engine
from callcenter.settings import ApiSettings
from callcenter.store import Keys
from callcenter_dev.servers import RedisServer

TENANT = "sip"
PASSWORD = "s3cret-sip-pass"


@pytest.fixture
def settings(redis_server: RedisServer, tmp_path: Path) -> ApiSettings:
    return ApiSettings(redis_url=redis_server.url, tenant=TENANT, database_url=f"sqlite:///{tmp_path / 'cc.sqlite3'}")


@pytest.fixture
async def api(redis: aioredis.Redis, settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(settings) as (client, _app):
        r = await client.put("/v1/agents/a1", json={"uri": "sip:a1@sip.example.com", "skills": ["sales"]})
        assert r.status_code == 201, r.text
        yield client


async def test_the_password_is_kept_as_ha1s_and_never_shown(api: httpx.AsyncClient, redis: aioredis.Redis,
                                                             settings: ApiSettings) -> None:
    r = await api.put("/v1/agents/a1/sip", json={"password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json() == {"agent_id": "a1", "realm": "callcenter", "password_set": True,
                        "registration_required": False, "contacts": []}
    cached = await redis.hgetall(Keys(TENANT).sip_auth("a1"))
    assert cached[b"ha1_md5"] == hashlib.md5(f"a1:callcenter:{PASSWORD}".encode()).hexdigest().encode()
    assert cached[b"ha1_sha256"] == hashlib.sha256(f"a1:callcenter:{PASSWORD}".encode()).hexdigest().encode()
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM agent_sip")).mappings().one()
    engine.dispose()
    assert PASSWORD not in json.dumps({k: str(v) for k, v in row.items()})
    for path in ("/v1/agents/a1/sip", "/v1/agents/a1", "/v1/agents"):
        body = (await api.get(path)).text
        assert PASSWORD not in body and cached[b"ha1_md5"].decode() not in body and "ha1" not in body
    # rotated: new hashes, the setting kept
    await api.put("/v1/agents/a1/sip", json={"registration_required": True})
    r = await api.put("/v1/agents/a1/sip", json={"password": "another-pass"})
    assert r.json()["registration_required"] is True
    assert (await redis.hget(Keys(TENANT).sip_auth("a1"), "ha1_md5")) != cached[b"ha1_md5"]


async def test_bad_bodies_and_unknown_agents(api: httpx.AsyncClient) -> None:
    problem(await api.put("/v1/agents/a1/sip", json={"password": "short"}), 422, "validation-failed")
    problem(await api.put("/v1/agents/a1/sip", json={"password": PASSWORD, "ha1": "x"}), 422, "validation-failed")
    problem(await api.put("/v1/agents/ghost/sip", json={"password": PASSWORD}), 404, "not-found")
    problem(await api.get("/v1/agents/ghost/sip"), 404, "not-found")
    problem(await api.delete("/v1/agents/a1/sip"), 404, "not-found")


async def test_login_needs_a_live_registration_when_required(api: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    await api.put("/v1/agents/a1/sip", json={"password": PASSWORD, "registration_required": True})
    body = problem(await api.post("/v1/agents/a1/login"), 409, "invalid-state")
    assert "must be registered" in body["detail"]
    keys = Keys(TENANT)
    expiry = int(time.time() * 1000) + 60_000
    await redis.zadd(keys.aor("a1"), {"c1": expiry})
    await redis.hset(keys.aor_bindings("a1"), "c1", json.dumps({"uri": "sip:a1@10.0.0.1", "received": "10.0.0.1:5060",
                                                                "transport": "udp"}))
    contacts = (await api.get("/v1/agents/a1/sip")).json()["contacts"]
    assert [(c["uri"], c["transport"]) for c in contacts] == [("sip:a1@10.0.0.1", "udp")]
    assert 50 < contacts[0]["expires_s"] <= 60
    r = await api.post("/v1/agents/a1/login")
    assert r.status_code == 200 and r.json()["state"] == "free", r.text


async def test_deleting_the_settings_or_the_agent_forgets_the_credentials(api: httpx.AsyncClient,
                                                                          redis: aioredis.Redis) -> None:
    key = Keys(TENANT).sip_auth("a1")
    await api.put("/v1/agents/a1/sip", json={"password": PASSWORD})
    assert (await api.delete("/v1/agents/a1/sip")).status_code == 204
    assert not await redis.exists(key)
    await api.put("/v1/agents/a1/sip", json={"password": PASSWORD})
    assert (await api.delete("/v1/agents/a1")).status_code == 204
    assert not await redis.exists(key)


async def test_an_empty_redis_gets_the_credentials_back_from_sql(redis: aioredis.Redis, settings: ApiSettings) -> None:
    async with running(settings) as (client, _app):
        await client.put("/v1/agents/a1", json={"uri": "sip:a1@sip.example.com", "skills": ["sales"]})
        await client.put("/v1/agents/a1/sip", json={"password": PASSWORD, "registration_required": True})
    await redis.flushall()
    async with running(settings) as (client, _app):
        cached = await redis.hgetall(Keys(TENANT).sip_auth("a1"))
        assert cached[b"registration_required"] == b"1" and len(cached[b"ha1_sha256"]) == 64
