"""The api against a real redis-server and a temporary SQLite file, through its ASGI app (lifespan run);
the tests of what lives in SQL (provisioning, CDR queries) run on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from api_client import running
from problems import problem
from sqlalchemy.orm import Session

from callcenter.contract.codec import encode
from callcenter.db.engine import make_engine, upgrade
from callcenter.db.models import Agent, Cdr, Flow
from callcenter.settings import ApiSettings
from callcenter.store import Keys, Store
from callcenter.store.config import PARAMS
from callcenter.store.config_writes import seed_config
from callcenter_api.deps import Services
from callcenter_dev.servers import RedisServer, free_port

TENANT = "api"
FLOW = {"skill": "sales", "priority": 3, "queue_uri": "sip:queue@127.0.0.1:5090", "welcome_uri": None}
AGENT = {"uri": "sip:alice@127.0.0.1:5070", "skills": ["sales", "support"]}


@pytest.fixture
async def app_services(redis: aioredis.Redis, settings: ApiSettings) -> AsyncIterator[tuple[httpx.AsyncClient,
                                                                                              Services]]:
    async with running(settings) as (client, app):
        yield client, app.state.services


@pytest.fixture
def sql_settings(redis_server: RedisServer, sql_url: str) -> ApiSettings:
    """The api's settings on each SQL backend in turn (a new database, migrated by the api's start)."""
    return ApiSettings(redis_url=redis_server.url, tenant=TENANT, database_url=sql_url)


@pytest.fixture
async def sql_services(redis: aioredis.Redis, sql_settings: ApiSettings) -> AsyncIterator[tuple[httpx.AsyncClient,
                                                                                                 Services]]:
    async with running(sql_settings) as (client, app):
        yield client, app.state.services


async def queue_a_call(redis: aioredis.Redis, call_id: str, flow: str = "sales-line") -> None:
    """A caller arrives on `flow` with nobody logged in and waits (the dispatcher's Lua step)."""
    store = Store(redis, TENANT)
    await store.write_config({"reject_on_no_agents": 0})
    data = {"call_id": call_id, "edge": "edge-1", "seq": 1, "ts": 1, "flow": flow, "caller": "bob",
            "caller_uri": "sip:bob@127.0.0.1", "sip_call_id": call_id, "source": "127.0.0.1:5060"}
    payload = encode("report.call_arrived", data)["data"]
    assert isinstance(payload, bytes)
    res = await store.apply_report("report.call_arrived", f"1-{call_id}", payload)
    assert res.detail == "queued", res
    # the queue media answered and the caller ACKed: from now on an agent may be offered the call
    data = {"call_id": call_id, "edge": "edge-1", "seq": 2, "ts": 1, "purpose": "queue", "uri": "sip:q@x"}
    payload = encode("report.media_answered", data)["data"]
    assert isinstance(payload, bytes)
    res = await store.apply_report("report.media_answered", f"2-{call_id}", payload)
    assert res.detail == "queued", res


def hash_of(raw: dict[Any, Any]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_provisioning_round_trip(sql_services: tuple[httpx.AsyncClient, Services],
                                       redis: aioredis.Redis) -> None:
    api, services = sql_services
    r = await api.put("/v1/flows/sales-line", json=FLOW)
    assert r.status_code == 201, r.text
    assert r.json()["priority"] == 3 and r.json()["max_wrapup_s"] == 0
    r = await api.put("/v1/flows/sales-line", json={**FLOW, "prepend_cid": "S:", "max_wrapup_s": 10})
    assert r.status_code == 200
    assert (await api.get("/v1/flows/sales-line")).json()["prepend_cid"] == "S:"
    assert [f["id"] for f in (await api.get("/v1/flows")).json()["items"]] == ["sales-line"]

    r = await api.put("/v1/agents/alice", json={**AGENT, "skills": ["sales", "support", "sales"]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["skills"] == ["sales", "support"] and body["wrapup_s"] is None
    assert body["state"] == body["live"]["state"] == "logged_out"

    flow_row, agent_row = await services.sql(lambda s: (s.get(Flow, "sales-line"), s.get(Agent, "alice")))
    assert flow_row is not None and flow_row.max_wrapup_s == 10 and flow_row.created_at.tzinfo is not None
    assert agent_row is not None and agent_row.skills == "sales,support"

    flow_hash = hash_of(await redis.hgetall(f"cc:{{{TENANT}}}:flow:sales-line"))
    assert flow_hash["skill"] == "sales" and flow_hash["queue_uri"] == FLOW["queue_uri"]
    assert flow_hash["max_wrapup_s"] == "10" and flow_hash["welcome_uri"] == ""
    agent_hash = hash_of(await redis.hgetall(f"cc:{{{TENANT}}}:agent:alice"))
    assert agent_hash["skills"] == "sales,support" and agent_hash["uri"] == AGENT["uri"]
    assert await redis.sismember(f"cc:{{{TENANT}}}:skill:sales:flows", "sales-line")

    listed = (await api.get("/v1/agents")).json()["items"]
    assert [(a["id"], a["live"]["state"]) for a in listed] == [("alice", "logged_out")]


async def test_unknown_things_are_404_with_a_clear_message(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/agents/ghost/login")
    assert problem(r, 404, "not-found")["detail"] == "agent 'ghost' does not exist"
    assert (await api.post("/v1/agents/ghost/logout")).status_code == 404
    assert problem(await api.get("/v1/agents/ghost"), 404, "not-found")["detail"] == "agent 'ghost' does not exist"
    assert problem(await api.get("/v1/flows/nope"), 404, "not-found")["detail"] == "flow 'nope' does not exist"
    assert (await api.delete("/v1/flows/nope")).status_code == 404
    assert (await api.delete("/v1/agents/ghost")).status_code == 404
    assert (await api.get("/v1/calls/c-none")).status_code == 404


async def test_login_logout_states(api: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    await api.put("/v1/flows/sales-line", json=FLOW)
    await api.put("/v1/agents/alice", json=AGENT)
    r = await api.post("/v1/agents/alice/login")
    assert r.status_code == 200
    assert r.json() == {"agent_id": "alice", "state": "free", "already": False}
    assert (await api.post("/v1/agents/alice/login")).json() == {"agent_id": "alice", "state": "free",
                                                                 "already": True}
    assert (await api.post("/v1/agents/alice/logout")).json() == {"agent_id": "alice", "state": "logged_out",
                                                                  "already": False}
    assert (await api.post("/v1/agents/alice/logout")).json()["already"] is True

    # a caller waits; the login hands it to the agent in the same atomic step
    await queue_a_call(redis, "c1")
    queues = (await api.get("/v1/queues")).json()
    assert queues == [{"flow_id": "sales-line", "skill": "sales", "priority": 3, "waiting": 1, "calls": ["c1"],
                       "chats_waiting": 0, "chats": []}]
    calls = (await api.get("/v1/calls")).json()["items"]
    assert [(c["call_id"], c["state"], c["flow"]) for c in calls] == [("c1", "queued", "sales-line")]

    assert (await api.post("/v1/agents/alice/login")).json()["state"] == "ringing"
    call = (await api.get("/v1/calls/c1")).json()
    assert call["state"] == "offered" and call["agent_id"] == "alice"
    assert (await api.get("/v1/queues")).json()[0]["waiting"] == 0

    # logging out while ringing takes effect when that call is over
    assert (await api.post("/v1/agents/alice/logout")).json() == {"agent_id": "alice", "state": "pending",
                                                                  "already": False}
    agent = (await api.get("/v1/agents/alice")).json()
    live = agent["live"]
    assert agent["state"] == live["state"] == "ringing" and live["call"] == "c1" and live["logout_pending"] is True


@pytest.mark.parametrize("uri", ["http://example.com", "sip:", "sip:@", "sip:alice@", "sip:a b@host",
                                 "sip:alice@host:99999", "alice@host", "sip:alice@-host"])
async def test_bad_sip_uri_is_422(api: httpx.AsyncClient, uri: str) -> None:
    r = await api.put("/v1/agents/alice", json={**AGENT, "uri": uri})
    assert problem(r, 422, "validation-failed")["errors"][0]["loc"] == ["body", "uri"], uri
    r = await api.put("/v1/flows/f1", json={**FLOW, "queue_uri": uri})
    assert r.status_code == 422, uri


@pytest.mark.parametrize("uri", ["sip:alice@127.0.0.1", "sips:alice@example.com:5061;transport=tls",
                                 "sip:[::1]:5070", "SIP:queue@media.example.com?subject=x", "sip:media"])
async def test_good_sip_uris_are_accepted(api: httpx.AsyncClient, uri: str) -> None:
    assert (await api.put("/v1/agents/alice", json={**AGENT, "uri": uri})).status_code in (200, 201)


async def test_chat_agents_and_flow_options_round_trip(sql_services: tuple[httpx.AsyncClient, Services],
                                                       redis: aioredis.Redis) -> None:
    api, services = sql_services
    r = await api.put("/v1/flows/chat-line", json={**FLOW, "chat_policy": "full-load",
                                                   "flow_id_uri": "sip:flowid@127.0.0.1:7000"})
    assert r.status_code == 201, r.text
    assert (r.json()["chat_policy"], r.json()["flow_id_uri"]) == ("full-load", "sip:flowid@127.0.0.1:7000")
    flow_hash = hash_of(await redis.hgetall(f"cc:{{{TENANT}}}:flow:chat-line"))
    assert (flow_hash["chat_policy"], flow_hash["flow_id_uri"]) == ("full-load", "sip:flowid@127.0.0.1:7000")

    # a chat-only agent: no audio uri
    r = await api.put("/v1/agents/chatter", json={"chat_uri": "sip:chatter@127.0.0.1:7200", "chat_capacity": 6,
                                                  "skills": ["sales"]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["uri"], body["chat_uri"], body["chat_capacity"]) == (None, "sip:chatter@127.0.0.1:7200", 6)
    row = await services.sql(lambda s: s.get(Agent, "chatter"))
    assert row is not None and row.uri is None and row.chat_capacity == 6
    agent_hash = hash_of(await redis.hgetall(f"cc:{{{TENANT}}}:agent:chatter"))
    assert (agent_hash["uri"], agent_hash["chat_uri"], agent_hash["chat_capacity"]) == \
        ("", "sip:chatter@127.0.0.1:7200", "6")
    r = await api.post("/v1/agents/chatter/login")
    assert r.json()["state"] == "free"
    # free for chats, not for audio calls
    assert await redis.zscore(f"cc:{{{TENANT}}}:skill:sales:chat", "chatter") is not None
    assert await redis.zscore(f"cc:{{{TENANT}}}:skill:sales:free", "chatter") is None
    live = (await api.get("/v1/agents/chatter")).json()["live"]
    assert live["chats"] == 0 and live["state"] == "free"


@pytest.mark.parametrize("path, body", [
    ("/v1/agents/alice", {**AGENT, "skills": []}),
    ("/v1/agents/alice", {**AGENT, "skills": ["a,b"]}),
    ("/v1/agents/alice", {**AGENT, "wrapup_s": -1}),
    ("/v1/agents/alice", {**AGENT, "colour": "blue"}),
    ("/v1/agents/bad:id", AGENT),
    ("/v1/flows/f1", {k: v for k, v in FLOW.items() if k != "queue_uri"}),
    ("/v1/flows/f1", {**FLOW, "priority": -1}),
    ("/v1/flows/f1", {**FLOW, "skill": ""}),
    ("/v1/flows/" + "x" * 65, FLOW),
    ("/v1/agents/alice", {"skills": ["sales"]}),  # neither an audio nor a chat uri
    ("/v1/agents/alice", {**AGENT, "chat_capacity": 0}),
    ("/v1/agents/alice", {**AGENT, "chat_uri": "msrp://h:1/x;tcp"}),
    ("/v1/flows/f1", {**FLOW, "chat_policy": "round-robin"}),
    ("/v1/flows/f1", {**FLOW, "flow_id_uri": "not-a-uri"}),
])
async def test_validation_errors_are_422(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    assert (await api.put(path, json=body)).status_code == 422


async def test_restart_reseeds_an_empty_redis_from_sql(settings: ApiSettings, redis: aioredis.Redis) -> None:
    async with running(settings) as (api, _):
        await api.put("/v1/flows/sales-line", json=FLOW)
        await api.put("/v1/agents/alice", json=AGENT)
        await api.post("/v1/agents/alice/login")
    await redis.flushall()
    async with running(settings) as (api, _):
        assert hash_of(await redis.hgetall(f"cc:{{{TENANT}}}:flow:sales-line"))["skill"] == "sales"
        assert hash_of(await redis.hgetall(f"cc:{{{TENANT}}}:agent:alice"))["state"] == "logged_out"
        assert (await api.post("/v1/agents/alice/login")).json()["state"] == "free"
        # Redis emptied while the api runs: a login puts the agent back from SQL instead of a 404
        await redis.flushall()
        assert (await api.post("/v1/agents/alice/login")).json() == {"agent_id": "alice", "state": "free",
                                                                     "already": False}
        assert (await api.post("/v1/reload")).json()["flows"] == 1
        assert await redis.exists(f"cc:{{{TENANT}}}:flow:sales-line")


async def test_reload_prune_drops_what_sql_does_not_know(api: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    store = Store(redis, TENANT)
    await store.flow_upsert("stray", {"skill": "x", "queue_uri": "sip:q@127.0.0.1"})
    await store.agent_upsert("stray-agent", "sip:s@127.0.0.1", ["x"], None)
    assert (await api.post("/v1/reload")).json()["removed_flows"] == []
    assert (await api.post("/v1/reload?prune=true")).json() == {
        "flows": 0, "agents": 0, "removed_flows": ["stray"], "removed_agents": ["stray-agent"], "kept": []}
    assert not await redis.exists(f"cc:{{{TENANT}}}:flow:stray")


async def test_delete_rules(sql_services: tuple[httpx.AsyncClient, Services], redis: aioredis.Redis) -> None:
    api, services = sql_services
    await api.put("/v1/flows/sales-line", json=FLOW)
    await api.put("/v1/agents/alice", json=AGENT)
    await api.post("/v1/agents/alice/login")
    r = await api.delete("/v1/agents/alice")
    assert "logged in" in problem(r, 409, "invalid-state")["detail"]
    await api.post("/v1/agents/alice/logout")
    assert (await api.delete("/v1/agents/alice")).status_code == 204
    assert (await api.get("/v1/agents/alice")).status_code == 404
    assert not await redis.exists(f"cc:{{{TENANT}}}:agent:alice")
    assert await services.sql(lambda s: s.get(Agent, "alice")) is None

    await queue_a_call(redis, "c9")
    r = await api.delete("/v1/flows/sales-line")
    assert problem(r, 409, "invalid-state")["detail"] == ("flow 'sales-line' cannot be deleted: calls are "
                                                          "waiting in this flow")
    assert await services.sql(lambda s: s.get(Flow, "sales-line")) is not None
    await redis.delete(f"cc:{{{TENANT}}}:queue:sales-line")
    assert (await api.delete("/v1/flows/sales-line")).status_code == 204
    assert (await api.get("/v1/flows")).json()["items"] == []
    assert not await redis.exists(f"cc:{{{TENANT}}}:flow:sales-line")


async def test_cdr_queries(sql_services: tuple[httpx.AsyncClient, Services]) -> None:
    api, services = sql_services
    t0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def add(session: Any) -> None:
        for i in range(5):
            session.add(Cdr(call_id=f"c{i}", flow_id="sales-line" if i % 2 == 0 else "support", caller="bob",
                            agent_id="alice" if i < 3 else None, received_at=t0 + timedelta(minutes=i),
                            wait_ms=1000 * i, pickup_ms=0, talk_ms=0, outcome="answered" if i < 3 else "abandoned",
                            ended_by="caller", reason="bye", rejections=0, event_id=f"{i}-0",
                            media_type="chat" if i == 1 else "audio"))

        # an agent attempt of c2 that did not connect, before its final row (the cdr-writer's rows)
        session.add(Cdr(call_id="c2", attempt=1, flow_id="sales-line", caller="bob", agent_id="carol",
                        received_at=t0 + timedelta(minutes=2), wait_ms=900, pickup_ms=900, talk_ms=0,
                        outcome="not_connected", ended_by="agent", reason="rejected", rejections=0, event_id="2-1",
                        call_type=-2, fstats=3, tenant=TENANT, sip_call_id="sip-c2", edge="edge-1", priority=5))

    await services.sql(add)

    async def ids(**params: Any) -> list[str]:
        r = await api.get("/v1/cdrs", params=params)
        assert r.status_code == 200, r.text
        return [c["call_id"] for c in r.json()["items"]]

    page = (await api.get("/v1/cdrs", params={"kind": "final"})).json()
    assert [c["call_id"] for c in page["items"]] == ["c4", "c3", "c2", "c1", "c0"]
    assert page["next_offset"] is None and page["limit"] == 100 and page["offset"] == 0
    assert await ids() == ["c4", "c3", "c2", "c2", "c1", "c0"]  # both kinds by default
    attempts = (await api.get("/v1/cdrs", params={"kind": "attempt"})).json()["items"]
    assert [(c["call_id"], c["attempt"], c["agent_id"], c["outcome"], c["reason"], c["pickup_ms"], c["call_type"],
             c["fstats"], c["sip_call_id"], c["edge"], c["priority"], c["tenant"]) for c in attempts] == [
        ("c2", 1, "carol", "not_connected", "rejected", 900, -2, 3, "sip-c2", "edge-1", 5, TENANT)]
    one_call = (await api.get("/v1/cdrs", params={"call_id": "c2", "order": "asc"})).json()["items"]
    assert [(c["attempt"], c["outcome"]) for c in one_call] in ([(0, "answered"), (1, "not_connected")],
                                                                [(1, "not_connected"), (0, "answered")])
    final = next(c for c in one_call if c["attempt"] == 0)
    assert (final["call_type"], final["tenant"], final["sip_call_id"], final["hold_ms"]) == (-1, "default", None, None)
    assert await ids(outcome="not_connected") == ["c2"]
    assert (await api.get("/v1/cdrs", params={"kind": "other"})).status_code == 422
    assert page["items"][0]["received_at"].startswith("2025-03-01T12:04:00")
    assert await ids(flow_id="sales-line", order="asc") == ["c0", "c2", "c2", "c4"]
    assert await ids(flow_id="sales-line", order="asc", kind="final") == ["c0", "c2", "c4"]
    page = (await api.get("/v1/cdrs", params={"agent_id": "alice", "limit": 2})).json()
    assert [c["call_id"] for c in page["items"]] == ["c2", "c1"] and page["next_offset"] == 2
    assert await ids(agent_id="alice", limit=2, offset=2) == ["c0"]
    assert await ids(agent_id="carol") == ["c2"]
    assert await ids(since="2025-03-01T12:01:00Z", until="2025-03-01T13:03:00+01:00") == ["c2", "c2", "c1"]
    assert await ids(since="2025-03-01T12:04:00") == ["c4"]  # no zone: UTC
    assert await ids(outcome="abandoned") == ["c4", "c3"]
    assert await ids(media_type="chat") == ["c1"]
    assert (await api.get("/v1/cdrs", params={"media_type": "fax"})).status_code == 422
    assert (await api.get("/v1/cdrs", params={"limit": 0})).status_code == 422
    assert (await api.get("/v1/cdrs", params={"since": "yesterday"})).status_code == 422


async def test_probes_and_docs(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).json() == {"status": "ok", "redis": "ok", "sql": "ok"}
    assert (await api.get("/docs")).status_code == 200
    assert "/v1/agents/{agent_id}/login" in (await api.get("/openapi.json")).json()["paths"]


async def test_readyz_is_503_when_redis_is_gone(settings: ApiSettings, redis: aioredis.Redis) -> None:
    async with running(settings) as (api, app):
        services: Services = app.state.services
        await services.redis.aclose()
        services.redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
        r = await api.get("/readyz")
        body = problem(r, 503, "not-ready")
        assert body["sql"] == "ok" and body["redis"].startswith("error") and body["detail"] == "redis unreachable"
        problem(await api.get("/v1/queues"), 503, "redis-unavailable")


async def test_api_starts_before_its_redis_and_seeds_it_when_it_comes_up(tmp_path: Path) -> None:
    server = RedisServer()
    server.port = free_port()
    db = f"sqlite:///{tmp_path / 'early.sqlite3'}"
    settings = ApiSettings(redis_url=server.url, tenant=TENANT, database_url=db)
    # a flow already in SQL from an earlier run
    engine = make_engine(db)
    upgrade(engine)
    with Session(engine) as session, session.begin():
        session.add(Flow(id="early", skill="s", priority=1, queue_uri="sip:q@127.0.0.1"))
    engine.dispose()
    async with running(settings) as (api, _):
        assert (await api.get("/readyz")).status_code == 503  # no Redis yet, but the api serves
        server.start()
        client = aioredis.Redis.from_url(server.url)
        try:
            for _ in range(100):
                if await client.exists(f"cc:{{{TENANT}}}:flow:early"):
                    break
                await asyncio.sleep(0.05)
            assert await client.exists(f"cc:{{{TENANT}}}:flow:early")
            assert (await api.get("/readyz")).status_code == 200
        finally:
            await client.aclose()
            server.stop()


async def test_the_environment_seeds_only_a_config_that_does_not_exist(redis: aioredis.Redis,
                                                                      settings: ApiSettings) -> None:
    """CC_* call-handling variables seed cc:{t}:config at start-up; PATCH /v1/config owns it after that."""
    keys = Keys(TENANT)
    env = settings.model_dump(include={"redis_url", "tenant", "database_url"})
    async with running(ApiSettings(**env, wrapup_s=5, reject_on_no_agents=False)) as (api, _):
        # only what the environment sets explicitly is written; the rest stays the registry's default
        assert hash_of(await redis.hgetall(keys.config)) == {"wrapup_s": "5", "reject_on_no_agents": "0"}
        got = (await api.get("/v1/config")).json()
        assert (got["wrapup_s"], got["reject_on_no_agents"], got["ring_timeout_s"]) == (5, False, 20)
        assert (await api.patch("/v1/config", json={"wrapup_s": 7})).status_code == 200
    # a restart with other values leaves the existing config alone
    async with running(ApiSettings(**env, wrapup_s=9, ring_timeout_s=11)) as (api, _):
        got = (await api.get("/v1/config")).json()
        assert (got["wrapup_s"], got["ring_timeout_s"]) == (7, 20)


async def test_two_seeds_at_once_write_one_whole_config(redis: aioredis.Redis) -> None:
    keys = Keys(TENANT)
    first, second = {"wrapup_s": 1, "ring_timeout_s": 2}, {"wrapup_s": 3, "no_agents_code": 486}
    done = await asyncio.gather(seed_config(redis, keys, first), seed_config(redis, keys, second))
    assert sorted(done) == [False, True]
    winner = first if done[0] else second
    assert hash_of(await redis.hgetall(keys.config)) == {k: str(v) for k, v in winner.items()}
    assert await seed_config(redis, keys, first) is False


# -- hostile input: bounds, strict types, path-like ids, body cap, problem responses (issue 10) --------

@pytest.mark.parametrize("raw", ['{"wrapup_s": NaN}', '{"wrapup_s": Infinity}', '{"wrapup_s": -Infinity}',
                                 '{"events_maxlen": 1e30}', '{"events_maxlen": 100000001}'])
async def test_non_finite_and_huge_numbers_are_422(api: httpx.AsyncClient, raw: str) -> None:
    r = await api.patch("/v1/config", content=raw, headers={"content-type": "application/json"})
    body = problem(r, 422, "validation-failed")
    assert body["errors"][0]["loc"][:2] == ["body", raw.split('"')[1]], body
    assert (await api.get("/v1/config")).json()["events_maxlen"] == PARAMS["events_maxlen"].default == 5_000_000


@pytest.mark.parametrize("body", [{"wrapup_s": "10"}, {"wrapup_s": True}, {"wrapup_s": 10.0},
                                  {"reject_on_no_agents": 1}, {"reject_on_no_agents": "true"}])
async def test_no_coercion_of_config_values(app_services: tuple[httpx.AsyncClient, Services],
                                            body: dict[str, Any]) -> None:
    api, services = app_services
    problem(await api.patch("/v1/config", json=body), 422, "validation-failed")
    assert await services.redis.hgetall(services.store.keys.config) == {}


async def test_no_coercion_of_body_numbers(api: httpx.AsyncClient) -> None:
    for change in ({"priority": "3"}, {"priority": True}, {"max_wait_s": "0"}, {"dissuading_hangup": 0}):
        problem(await api.put("/v1/flows/f1", json={**FLOW, **change}), 422, "validation-failed")
    for change in ({"wrapup_s": "5"}, {"chat_capacity": False}, {"skills": "sales"}):
        problem(await api.put("/v1/agents/a1", json={**AGENT, **change}), 422, "validation-failed")
    assert (await api.get("/v1/flows")).json()["items"] == [] and (await api.get("/v1/agents")).json()["items"] == []


@pytest.mark.parametrize("bad_id", ["%2E", "%2E%2E", "..", ".hidden", "-rf", "a%2Fb", "x" * 129])
async def test_path_like_ids_are_refused(api: httpx.AsyncClient, bad_id: str) -> None:
    for path in (f"/v1/flows/{bad_id}", f"/v1/agents/{bad_id}"):
        r = await api.put(path, json=FLOW if "flows" in path else AGENT)
        assert r.status_code in (404, 405, 422), (path, r.status_code)  # never created
        assert r.status_code != 201
    for path in (f"/v1/calls/{bad_id}", f"/v1/agents/{bad_id}/login"):
        assert (await api.request("GET" if "calls" in path else "POST", path)).status_code in (404, 422)
    assert (await api.get("/v1/flows")).json()["items"] == [] and (await api.get("/v1/agents")).json()["items"] == []


@pytest.mark.parametrize("bad_id", ["%2E", "%2E%2E", ".hidden", "-rf"])
async def test_dot_ids_are_422_with_a_problem(api: httpx.AsyncClient, bad_id: str) -> None:
    problem(await api.put(f"/v1/flows/{bad_id}", json=FLOW), 422, "validation-failed")
    problem(await api.put(f"/v1/agents/{bad_id}", json=AGENT), 422, "validation-failed")
    problem(await api.get(f"/v1/calls/{bad_id}"), 422, "validation-failed")
    r = await api.post("/v1/calls/c1/dispatch", json={"agent_id": bad_id.replace("%2E", ".")})
    problem(r, 422, "validation-failed")


async def test_a_422_echoes_only_a_short_excerpt(api: httpx.AsyncClient) -> None:
    huge = "sip:" + "a" * 60_000 + "@host"
    r = await api.put("/v1/agents/alice", json={"uri": huge, "skills": ["s"]})
    body = problem(r, 422, "validation-failed")
    assert len(r.content) < 2000, len(r.content)
    assert body["errors"][0]["loc"] == ["body", "uri"]
    # a missing field's input is the whole body: it is cut too
    r = await api.put("/v1/agents/alice", json={"skills": ["s"] * 60, "uri": None, "note": "n" * 50_000})
    assert r.status_code == 422 and len(r.content) < 4000, len(r.content)


async def test_a_body_over_the_cap_is_413_before_it_is_read(settings: ApiSettings, redis: aioredis.Redis) -> None:
    capped = settings.model_copy(update={"api_max_body_bytes": 1024})
    async with running(capped) as (api, _):
        big = {**AGENT, "uri": "sip:" + "a" * 2000 + "@host"}
        problem(await api.put("/v1/agents/alice", json=big), 413, "body-too-large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the stream is counted
            yield b'{"skills": ["s"], "uri": "sip:'
            for _ in range(10):
                yield b"a" * 200
            yield b'@host"}'

        r = await api.put("/v1/agents/alice", content=chunks(), headers={"content-type": "application/json"})
        problem(r, 413, "body-too-large")
        r = await api.put("/v1/agents/alice", headers={"content-length": "999999999", "content-type":
                                                       "application/json"}, content=b"{}")
        problem(r, 413, "body-too-large")
        assert (await api.get("/v1/agents")).json()["items"] == []
        assert (await api.put("/v1/agents/alice", json=AGENT)).status_code == 201  # under the cap
    assert ApiSettings().api_max_body_bytes == 64 * 1024


async def test_every_error_is_a_problem(api: httpx.AsyncClient) -> None:
    assert problem(await api.get("/v1/agents/ghost"), 404, "not-found")["detail"] == "agent 'ghost' does not exist"
    problem(await api.get("/v1/no-such-route"), 404, "not-found")
    problem(await api.delete("/v1/config"), 405, "method-not-allowed")
    problem(await api.put("/v1/agents/alice", content=b"{", headers={"content-type": "application/json"}),
            422, "validation-failed")
    await api.put("/v1/agents/alice", json=AGENT)
    await api.post("/v1/agents/alice/login")
    body = problem(await api.delete("/v1/agents/alice"), 409, "invalid-state")
    assert "logged in" in body["detail"]
    openapi = (await api.get("/openapi.json")).json()
    assert "application/problem+json" in openapi["paths"]["/v1/agents/{agent_id}"]["put"]["responses"]["422"][
        "content"]
