"""Overflow cycles at provisioning (issue 10, item 7): PUT /v1/flows refuses a flow whose
overflow_flow chain leads back to it with a 409 problem naming the cycle, and saves nothing, in SQL
or in the Redis cache. The api in-process against a real redis-server and a temporary SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from api_client import running
from problems import problem

from callcenter.db.models import Flow
from callcenter.settings import ApiSettings
from callcenter_api.deps import Services
from callcenter_dev.servers import RedisServer

FLOW = {"skill": "sales", "queue_uri": "sip:queue@127.0.0.1:5090"}


def flow(overflow_flow: str | None) -> dict[str, Any]:
    return {**FLOW, "max_wait_s": 30, "overflow_flow": overflow_flow} if overflow_flow else dict(FLOW)


@pytest.fixture
async def api(redis: aioredis.Redis, redis_server: RedisServer,
              tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    settings = ApiSettings(redis_url=redis_server.url, tenant="overflow",
                           database_url=f"sqlite:///{tmp_path / 'cc.sqlite3'}")
    async with running(settings) as (client, app):
        yield client, app.state.services


async def cached(services: Services, flow_id: str) -> dict[bytes, bytes]:
    raw: dict[bytes, bytes] = await services.redis.hgetall(services.store.keys.flow(flow_id))
    return raw


@pytest.mark.parametrize(("chain", "closing", "cycle"), [
    ([("a", "b")], ("b", "a"), ["b", "a", "b"]),
    ([("a", "b"), ("b", "c")], ("c", "a"), ["c", "a", "b", "c"]),
])
@pytest.mark.parametrize("existing", [False, True], ids=["create", "update"])
async def test_put_flow_refuses_an_overflow_cycle_and_saves_nothing(
        api: tuple[httpx.AsyncClient, Services], chain: list[tuple[str, str]], closing: tuple[str, str],
        cycle: list[str], existing: bool) -> None:
    client, services = api
    for flow_id, target in chain:
        assert (await client.put(f"/v1/flows/{flow_id}", json=flow(target))).status_code in (200, 201)
    flow_id, target = closing
    if existing:
        assert (await client.put(f"/v1/flows/{flow_id}", json=flow(None))).status_code in (200, 201)
    before_sql = (await client.get(f"/v1/flows/{flow_id}")).json()
    before_cache = await cached(services, flow_id)

    body = problem(await client.put(f"/v1/flows/{flow_id}", json=flow(target)), 409, "overflow-cycle")
    assert body["cycle"] == cycle
    assert " -> ".join(cycle) in body["detail"]
    assert (await client.get(f"/v1/flows/{flow_id}")).json() == before_sql  # 404 body when it was new
    assert await cached(services, flow_id) == before_cache


async def test_a_cycle_only_the_cache_shows_is_refused_and_the_sql_write_undone(
        api: tuple[httpx.AsyncClient, Services]) -> None:
    # b -> a in Redis but not in SQL (a concurrent PUT, a cache written by other means): the SQL
    # check passes, flow_upsert refuses, and the api takes its SQL write back
    client, services = api
    assert (await client.put("/v1/flows/a", json=flow(None))).status_code == 201
    await services.store.flow_upsert("b", {**FLOW, "max_wait_s": 30, "overflow_flow": "a"})
    body = problem(await client.put("/v1/flows/a", json=flow("b")), 409, "overflow-cycle")
    assert body["cycle"] == ["a", "b", "a"]
    assert (await client.get("/v1/flows/a")).json()["overflow_flow"] is None
    assert (await cached(services, "a"))[b"overflow_flow"] == b""
    # c -> b -> a ends in a flow without overflow_flow: no cycle
    assert (await client.put("/v1/flows/c", json=flow("b"))).status_code == 201


async def test_reload_caches_a_stored_cycle_without_its_closing_hop(api: tuple[httpx.AsyncClient, Services]) -> None:
    client, services = api

    def legacy(session: Any) -> None:  # rows written before cycles were refused
        session.add(Flow(id="a", **FLOW, max_wait_s=30, overflow_flow="b"))
        session.add(Flow(id="b", **FLOW, max_wait_s=30, overflow_flow="a"))

    await services.sql(legacy)
    r = await client.post("/v1/reload")
    assert r.status_code == 200, r.text
    hops = {f: (await cached(services, f))[b"overflow_flow"] for f in ("a", "b")}
    assert sorted(hops.values()) in ([b"", b"a"], [b"", b"b"])  # one hop of the cycle left out
    assert [(await client.get(f"/v1/flows/{f}")).json()["overflow_flow"] for f in ("a", "b")] == ["b", "a"]
