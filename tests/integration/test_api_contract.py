"""The api's contract for programs (issue 11, acceptance 5 and 6), through its ASGI app against a
real redis-server and a temporary SQLite file: the OpenAPI document (operation ids, tags, declared
problems), Idempotency-Key on POST, ETag / If-Match on flows and agents, cursor pagination."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from problems import problem
from sqlalchemy.orm import Session

from callcenter.db.models import Cdr
from callcenter.settings import ApiSettings
from callcenter.store import Keys

TENANT = "contract"
FLOW = {"skill": "sales", "queue_uri": "sip:queue@127.0.0.1:5090"}
AGENT = {"uri": "sip:alice@127.0.0.1:5070", "skills": ["sales"]}
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
OPERATION_ID = re.compile(r"^[a-z]+(_[a-z]+)+$")


# -- acceptance 5: the OpenAPI document ------------------------------------------------------------

def expected_errors(path: str, method: str, operation: dict[str, Any]) -> set[str]:
    """What the issue asks of every operation, from its own shape (not from the api's code)."""
    codes: set[str] = set()
    if path.startswith("/v1/"):
        codes |= {"401", "403", "503"}
    if "{" in path:
        codes.add("404")
    if operation.get("requestBody") or operation.get("parameters"):
        codes.add("422")
    if method == "post" and path.startswith("/v1/"):
        codes.add("409")  # an Idempotency-Key whose first request still runs
    return codes


async def test_every_operation_has_a_stable_id_tags_and_its_errors_as_problems(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert spec["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status", "detail"]
    ids: list[str] = []
    wrong: list[str] = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            ids.append(op.get("operationId", ""))
            tags = op.get("tags") or []
            if not tags:
                wrong.append(f"{where}: no tags")
            if not OPERATION_ID.match(op.get("operationId", "")) or not op["operationId"].startswith(
                    tags[0].replace("-", "_") + "_" if tags else "?"):
                wrong.append(f"{where}: operationId {op.get('operationId')!r} is not <tag>_<action>")
            missing = expected_errors(path, method, op) - set(op["responses"])
            if missing:
                wrong.append(f"{where}: does not declare {sorted(missing)}")
            for code, response in op["responses"].items():
                if code[0] in "45" and response.get("content") != PROBLEM:
                    wrong.append(f"{where}: {code} is not a Problem")
            if method == "post" and path.startswith("/v1/") and "Idempotency-Key" not in {
                    p["name"] for p in op.get("parameters", [])}:
                wrong.append(f"{where}: no Idempotency-Key header")
    assert wrong == [], "\n".join(wrong)
    assert len(ids) == len(set(ids))
    # the ids the issue names, and the ones clients will most use, are these exactly
    assert {"agents_login", "agents_logout", "agents_pause", "flows_update", "flows_list", "agents_update",
            "calls_list", "cdrs_list", "keys_create", "events_stream"} <= set(ids)
    item = spec["paths"]["/v1/flows/{flow_id}"]
    assert "412" in item["put"]["responses"] and "409" in item["delete"]["responses"]
    assert "If-Match" in {p["name"] for p in item["put"]["parameters"]}


# -- acceptance 6: Idempotency-Key -----------------------------------------------------------------

async def test_the_same_post_twice_with_one_key_has_one_effect_and_the_same_answer(
        api: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    events = Keys(TENANT).events
    assert (await api.put("/v1/agents/alice", json=AGENT)).status_code == 201
    first = await api.post("/v1/keys", json={"name": "desk", "role": "supervisor"},
                           headers={"Idempotency-Key": "key-create-1"})
    again = await api.post("/v1/keys", json={"name": "desk", "role": "supervisor"},
                           headers={"Idempotency-Key": "key-create-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert [k["name"] for k in (await api.get("/v1/keys")).json()["items"]].count("desk") == 1

    # a login is one step on the stream, however often it is sent with its key
    before = await redis.xlen(events)
    login = await api.post("/v1/agents/alice/login", headers={"Idempotency-Key": "login-1"})
    assert login.status_code == 200 and login.json()["already"] is False
    logged_in = await redis.xlen(events)
    assert logged_in > before
    for _ in range(2):
        r = await api.post("/v1/agents/alice/login", headers={"Idempotency-Key": "login-1"})
        assert r.status_code == 200 and r.json() == login.json()
    assert await redis.xlen(events) == logged_in
    # without a key the same POST runs again (an already-logged-in login: already true)
    assert (await api.post("/v1/agents/alice/login")).json()["already"] is True

    # the same key for another request: refused, and nothing is done
    other = await api.post("/v1/agents/alice/logout", headers={"Idempotency-Key": "login-1"})
    problem(other, 422, "idempotency-key-reused")
    reused = await api.post("/v1/keys", json={"name": "other", "role": "supervisor"},
                            headers={"Idempotency-Key": "key-create-1"})
    problem(reused, 422, "idempotency-key-reused")
    assert (await api.get("/v1/agents/alice")).json()["state"] == "free"
    problem(await api.post("/v1/agents/alice/logout", headers={"Idempotency-Key": "bad key with spaces"}),
            422, "validation-failed")

    # kept under the tenant's prefix, with a TTL of a day at most
    stored = [k async for k in redis.scan_iter(match=Keys(TENANT).prefix + "idem:*")]
    assert len(stored) == 2
    assert all(0 < ttl <= 24 * 3600 for ttl in [await redis.ttl(k) for k in stored])


async def test_a_refusal_is_replayed_but_a_denial_is_not_kept(api: httpx.AsyncClient) -> None:
    # a 404 is the answer to that request: replayed as it was, even once the agent exists
    missing = await api.post("/v1/agents/nobody/login", headers={"Idempotency-Key": "k-404"})
    problem(missing, 404, "not-found")
    assert (await api.put("/v1/agents/nobody", json=AGENT)).status_code == 201
    replayed = await api.post("/v1/agents/nobody/login", headers={"Idempotency-Key": "k-404"})
    assert replayed.status_code == 404 and replayed.headers["idempotent-replayed"] == "true"
    # a 401 is not kept: the same key with a credential runs the request
    anonymous = await api.post("/v1/agents/nobody/login", headers={"Idempotency-Key": "k-401",
                                                                   "Authorization": ""})
    assert anonymous.status_code == 401
    assert (await api.post("/v1/agents/nobody/login", headers={"Idempotency-Key": "k-401"})).status_code == 200


async def test_concurrent_requests_with_one_key_run_once(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/agents/bob", json=AGENT)).status_code == 201
    answers = await asyncio.gather(*(api.post("/v1/agents/bob/login", headers={"Idempotency-Key": "race"})
                                     for _ in range(5)))
    done = [r for r in answers if r.status_code == 200]
    assert done and all(r.json() == done[0].json() for r in done)
    assert done[0].json()["already"] is False
    for r in answers:
        if r.status_code != 200:
            problem(r, 409, "idempotency-in-progress")


# -- acceptance 6: ETag / If-Match -----------------------------------------------------------------

@pytest.mark.parametrize(("path", "body", "change"), [
    ("/v1/flows/sales", FLOW, {"priority": 7}),
    ("/v1/agents/alice", AGENT, {"wrapup_s": 9}),
])
async def test_a_stale_write_gets_412_and_a_current_one_goes_through(
        api: httpx.AsyncClient, path: str, body: dict[str, Any], change: dict[str, Any]) -> None:
    created = await api.put(path, json=body)
    assert created.status_code == 201
    read = await api.get(path)
    tag = read.headers["etag"]
    assert tag == created.headers["etag"] and tag.startswith('"')
    # a write with the current ETag goes through and gives a new one
    updated = await api.put(path, json={**body, **change}, headers={"If-Match": tag})
    assert updated.status_code == 200 and updated.headers["etag"] != tag
    # a second writer that read the old version is refused, and changes nothing
    stale = await api.put(path, json=body, headers={"If-Match": tag})
    detail = problem(stale, 412, "precondition-failed")["detail"]
    assert updated.headers["etag"] in detail
    now = await api.get(path)
    assert now.headers["etag"] == updated.headers["etag"]
    assert all(now.json()[k] == v for k, v in change.items())
    # `*`: any current version; a missing If-Match: no check (documented)
    assert (await api.put(path, json=body, headers={"If-Match": "*"})).status_code == 200
    assert (await api.put(path, json={**body, **change})).status_code == 200
    # If-Match on something that does not exist is a 412, not a create
    missing = path.rsplit("/", 1)[0] + "/ghost"
    problem(await api.put(missing, json=body, headers={"If-Match": "*"}), 412, "precondition-failed")
    assert (await api.get(missing)).status_code == 404


async def test_an_agent_login_does_not_make_its_definition_stale(api: httpx.AsyncClient) -> None:
    tag = (await api.put("/v1/agents/carol", json=AGENT)).headers["etag"]
    assert (await api.post("/v1/agents/carol/login")).status_code == 200
    assert (await api.get("/v1/agents/carol")).headers["etag"] == tag
    assert (await api.put("/v1/agents/carol", json=AGENT, headers={"If-Match": tag})).status_code == 200


# -- acceptance 6: cursor pagination ---------------------------------------------------------------

async def walk(api: httpx.AsyncClient, path: str, limit: int, **params: Any) -> list[list[Any]]:
    """Every page of a list, following next_cursor."""
    pages: list[list[Any]] = []
    cursor = None
    while True:
        r = await api.get(path, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        pages.append(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return pages


async def test_flows_agents_and_keys_page_by_cursor_without_skipping_or_repeating(api: httpx.AsyncClient) -> None:
    for i in range(7):
        assert (await api.put(f"/v1/flows/f{i}", json=FLOW)).status_code == 201
        assert (await api.put(f"/v1/agents/a{i}", json=AGENT)).status_code == 201
        assert (await api.post("/v1/keys", json={"name": f"k{i}", "role": "supervisor"})).status_code == 201
    pages = await walk(api, "/v1/flows", 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [f["id"] for p in pages for f in p] == [f"f{i}" for i in range(7)]
    # an agent added behind the cursor is not seen twice, one added ahead is seen
    first = (await api.get("/v1/agents", params={"limit": 4})).json()
    assert [a["id"] for a in first["items"]] == ["a0", "a1", "a2", "a3"]
    assert (await api.put("/v1/agents/a00", json=AGENT)).status_code == 201
    assert (await api.put("/v1/agents/a9", json=AGENT)).status_code == 201
    rest = (await api.get("/v1/agents", params={"cursor": first["next_cursor"]})).json()
    assert [a["id"] for a in rest["items"]] == ["a4", "a5", "a6", "a9"] and rest["next_cursor"] is None
    keys = [k["name"] for p in await walk(api, "/v1/keys", 2) for k in p]
    assert keys == ["tests"] + [f"k{i}" for i in range(7)]
    for bad in ("not-a-cursor", "W10", "WyJ4Il0"):  # garbage, [], ["x"] on a list of (time, id)
        problem(await api.get("/v1/keys", params={"cursor": bad}), 422, "validation-failed")
    problem(await api.get("/v1/flows", params={"limit": 1001}), 422, "validation-failed")


async def test_cdrs_page_by_cursor_and_still_by_offset(api: httpx.AsyncClient, settings: ApiSettings) -> None:
    from callcenter.db.engine import make_engine  # the cdr-writer's table, filled directly

    base = datetime(2026, 1, 1, tzinfo=UTC)
    engine = make_engine(settings.database_url)
    with Session(engine) as s, s.begin():
        for i in range(5):
            s.add(Cdr(call_id=f"c{i}", flow_id="sales", caller="bob", agent_id=None, received_at=base + timedelta(
                seconds=i // 2), wait_ms=0, pickup_ms=0, talk_ms=0, outcome="abandoned", ended_by="caller",
                reason="", rejections=0, media_type="audio", event_id=f"{i}-0"))
    engine.dispose()
    newest = [c["call_id"] for p in await walk(api, "/v1/cdrs", 2) for c in p]
    assert newest == ["c4", "c3", "c2", "c1", "c0"]
    oldest = [c["call_id"] for p in await walk(api, "/v1/cdrs", 2, order="asc") for c in p]
    assert oldest == ["c0", "c1", "c2", "c3", "c4"]
    page = (await api.get("/v1/cdrs", params={"limit": 2, "offset": 2})).json()
    assert [c["call_id"] for c in page["items"]] == ["c2", "c1"] and page["next_offset"] == 4
    cursor = (await api.get("/v1/cdrs", params={"limit": 2})).json()["next_cursor"]
    problem(await api.get("/v1/cdrs", params={"cursor": cursor, "order": "asc"}), 422, "validation-failed")


async def test_dead_letters_and_calls_page_by_cursor(api: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    keys = Keys(TENANT)
    for i in range(5):
        await redis.xadd(keys.dead, {"stream": keys.events, "group": "g", "entry_id": f"{i}-0", "error": f"e{i}"})
    errors = [d["error"] for p in await walk(api, "/v1/dead-letters", 2) for d in p]
    assert errors == ["e4", "e3", "e2", "e1", "e0"]
    for i in range(3):
        await redis.sadd(keys.calls, f"call{i}")
        await redis.hset(keys.call(f"call{i}"), mapping={"state": "queued", "flow": "sales", "caller": "bob",
                                                        "received_ms": str(1000 + i)})
    calls = [c["call_id"] for p in await walk(api, "/v1/calls", 2) for c in p]
    assert calls == ["call0", "call1", "call2"]
