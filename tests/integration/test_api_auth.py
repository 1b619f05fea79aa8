"""Keys, roles and tokens against the api as a real process (uvicorn, SQLite file, redis-server).

The matrix test walks every operation of the OpenAPI document and calls it as each kind of caller;
`EXPECTED` below (not the api's own policy table) says who may call what.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from api_client import ApiProcess, api_process

from callcenter_dev.servers import RedisServer
from callcenter_dev.sipp import wait_until

TOKEN_SECRET = "tests-token-secret-0123456789abcdef"

# per operation, the callers allowed: admin, supervisor, agent_own (an agent key for the agent the
# request is about: alice), agent_other (an agent key for bob asking about alice). No key: always 401.
ALL = {"admin", "supervisor", "agent_own", "agent_other"}
STAFF = {"admin", "supervisor"}
ADMIN = {"admin"}
SELF = {"admin", "supervisor", "agent_own"}
EXPECTED: dict[str, set[str]] = {
    "POST /v1/reload": ADMIN,
    "GET /v1/flows": STAFF,
    "GET /v1/flows/{flow_id}": STAFF,
    "PUT /v1/flows/{flow_id}": ADMIN,
    "DELETE /v1/flows/{flow_id}": ADMIN,
    "GET /v1/agents": STAFF,
    "GET /v1/agents/{agent_id}": SELF,
    "PUT /v1/agents/{agent_id}": ADMIN,
    "DELETE /v1/agents/{agent_id}": ADMIN,
    "GET /v1/agents/{agent_id}/sip": SELF,
    "PUT /v1/agents/{agent_id}/sip": ADMIN,
    "DELETE /v1/agents/{agent_id}/sip": ADMIN,
    "POST /v1/agents/{agent_id}/login": SELF,
    "POST /v1/agents/{agent_id}/logout": SELF,
    "POST /v1/agents/{agent_id}/pause": SELF,
    "POST /v1/agents/{agent_id}/unpause": SELF,
    "POST /v1/agents/{agent_id}/release": STAFF,
    "GET /v1/calls": ALL,  # an agent's list holds its own calls only
    "GET /v1/calls/{call_id}": ALL,  # then the route answers 403 for a call not the agent's own
    "POST /v1/calls/{call_id}/dispatch": STAFF,
    "GET /v1/queues": STAFF,
    "GET /v1/cdrs": STAFF,
    "GET /v1/config": ADMIN,
    "PATCH /v1/config": ADMIN,
    "GET /v1/stats": STAFF,
    "POST /v1/stats/reset": ADMIN,
    "GET /v1/service-level": STAFF,
    "GET /v1/events": ALL,  # filtered to the agent's own events
    "POST /v1/tokens": {"admin", "agent_own"},  # a token for alice: an admin or alice's own key
    "POST /v1/keys": ADMIN,
    "GET /v1/keys": ADMIN,
    "DELETE /v1/keys/{key_id}": ADMIN,
    "GET /v1/dead-letters": ADMIN,
    "POST /v1/dead-letters/{dead_id}/replay": ADMIN,
    "POST /v1/webhooks": ADMIN,
    "GET /v1/webhooks": ADMIN,
    "DELETE /v1/webhooks/{subscription_id}": ADMIN,
    "GET /v1/webhooks/deliveries": ADMIN,
    "POST /v1/webhooks/deliveries/{delivery_id}/replay": ADMIN,
    "GET /v1/reports/intervals": STAFF,
    "POST /v1/exports": ADMIN,
    "GET /v1/exports/{export_id}": ADMIN,
    "GET /v1/exports/{export_id}/file": ADMIN,
}
OPEN = {"GET /healthz", "GET /readyz"}
PATH_VALUES = {"agent_id": "alice", "flow_id": "sales", "call_id": "c-1", "key_id": "000000000000",
               "dead_id": "1-0", "subscription_id": "0" * 32, "delivery_id": "0" * 32, "export_id": "0" * 32}
BODIES: dict[str, Any] = {
    "PUT /v1/flows/{flow_id}": {"skill": "sales", "queue_uri": "sip:queue@127.0.0.1:5090"},
    "PUT /v1/agents/{agent_id}": {"uri": "sip:alice@127.0.0.1:5070", "skills": ["sales"]},
    "POST /v1/agents/{agent_id}/pause": {"reason": "lunch"},
    "PUT /v1/agents/{agent_id}/sip": {"password": "password-1"},
    "POST /v1/calls/{call_id}/dispatch": {"agent_id": "alice"},
    "PATCH /v1/config": {},
    "POST /v1/tokens": {"agent_id": "alice"},
    "POST /v1/keys": {"name": "matrix", "role": "supervisor"},
    "POST /v1/webhooks": {"url": "http://127.0.0.1:9/hook", "event_types": ["call.ended"]},
    "POST /v1/exports": {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"},
}


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    with api_process(redis_server, tmp_path_factory.mktemp("auth"), {"CC_API_TOKEN_SECRET": TOKEN_SECRET,
                                                                     "CC_LOG_LEVEL": "debug"}) as running:
        yield running


def call(client: httpx.Client, op: str) -> httpx.Response:
    method, template = op.split(" ", 1)
    path = template.format(**PATH_VALUES)
    if op == "GET /v1/events":
        with client.stream("GET", path) as r:  # the status and headers come at once; the stream never ends
            return r
    return client.request(method, path, json=BODIES.get(op) if method in ("POST", "PUT", "PATCH") else None)


def test_every_operation_and_role(api: ApiProcess) -> None:
    keys = {"admin": api.admin, "supervisor": api.key("supervisor"), "agent_own": api.key("agent", "alice"),
            "agent_other": api.key("agent", "bob")}
    with api.client(api.admin) as admin:
        assert admin.put("/v1/flows/sales", json=BODIES["PUT /v1/flows/{flow_id}"]).status_code in (200, 201)
        assert admin.put("/v1/agents/alice", json=BODIES["PUT /v1/agents/{agent_id}"]).status_code in (200, 201)
        spec = admin.get("/openapi.json").json()
    ops = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}
    assert ops - OPEN == set(EXPECTED), "the table of this test must name every operation of the api"
    cells: list[str] = []
    for op in sorted(EXPECTED):
        with api.client() as anonymous:
            r = call(anonymous, op)
            if r.status_code != 401:
                cells.append(f"{op} without a key: {r.status_code}")
        for who in ("agent_other", "agent_own", "supervisor", "admin"):  # admin last: it may delete things
            with api.client(keys[who]) as client:
                r = call(client, op)
            allowed = who in EXPECTED[op]
            if allowed == (r.status_code in (401, 403)):
                cells.append(f"{op} as {who}: {r.status_code} {r.text[:200]}")
    assert cells == [], "\n".join(cells)
    for op in OPEN:
        with api.client() as anonymous:
            assert call(anonymous, op).status_code == 200


def problem(r: httpx.Response, status: int, slug: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == f"urn:callcenter:problem:{slug}" and body["status"] == status, body
    return str(body["detail"])


def test_denials_are_problems_that_say_what_is_missing(api: ApiProcess) -> None:
    with api.client() as c:
        detail = problem(c.get("/v1/agents"), 401, "missing-credentials")
        assert "Authorization" in detail
        assert c.get("/v1/agents").headers["www-authenticate"].startswith("Bearer")
        problem(c.get("/v1/agents", headers={"Authorization": "Basic abc"}), 401, "missing-credentials")
        problem(c.get("/v1/agents", headers={"Authorization": "Bearer nonsense"}), 401, "invalid-credentials")
        key_id = api.admin.split("_")[1]
        wrong = f"cck_{key_id}_{'x' * 43}"
        assert "secret is wrong" in problem(c.get("/v1/agents", headers={"Authorization": f"Bearer {wrong}"}),
                                            401, "invalid-credentials")
    with api.client(api.key("supervisor")) as sup:
        detail = problem(sup.put("/v1/flows/x", json=BODIES["PUT /v1/flows/{flow_id}"]), 403, "role-forbidden")
        assert "admin" in detail and "supervisor" in detail
    with api.client(api.key("agent", "bob")) as bob:
        assert "'bob'" in problem(bob.post("/v1/agents/alice/login"), 403, "other-agent")


def test_keys_are_shown_once_stored_hashed_revocable_and_record_their_use(api: ApiProcess) -> None:
    with api.client(api.admin) as admin:
        r = admin.post("/v1/keys", json={"name": "desk-7", "role": "agent", "agent_id": "carol"})
        created = r.json()
        plain, key_id = created["key"], created["id"]
        assert plain.startswith(f"cck_{key_id}_") and len(plain.split("_", 2)[2]) >= 43
        listed = {k["id"]: k for k in admin.get("/v1/keys").json()["items"]}
        assert "key" not in listed[key_id] and listed[key_id]["last_used_at"] is None
        assert admin.post("/v1/keys", json={"name": "x", "role": "agent"}).status_code == 422
    secret = plain.split("_", 2)[2]
    with sqlite3.connect(api.db) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
        stored = conn.execute("SELECT secret_sha256 FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0]
    assert not any(secret in str(value) for row in rows for value in row)
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    with api.client(plain) as carol:
        assert carol.get("/v1/calls").status_code == 200
        with api.client(api.admin) as admin:
            keys_now = lambda: {k["id"]: k for k in admin.get("/v1/keys").json()["items"]}  # noqa: E731
            assert wait_until(lambda: keys_now()[key_id]["last_used_at"] is not None, 10)
            assert admin.delete(f"/v1/keys/{key_id}").json()["revoked_at"] is not None
            assert admin.delete("/v1/keys/ffffffffffff").status_code == 404
        problem(carol.get("/v1/calls"), 401, "revoked-key")


def test_tokens_act_for_one_agent_expire_and_die_with_their_key(api: ApiProcess) -> None:
    dave_key = api.key("agent", "dave", name="dave")
    with api.client(api.admin) as admin:
        admin.put("/v1/agents/dave", json={"uri": "sip:dave@127.0.0.1:5070", "skills": ["sales"]})
        admin.put("/v1/agents/erin", json={"uri": "sip:erin@127.0.0.1:5070", "skills": ["sales"]})
        assert admin.post("/v1/tokens", json={}).status_code == 403  # an admin must say for which agent
    with api.client(dave_key) as dave:
        problem(dave.post("/v1/tokens", json={"agent_id": "erin"}), 403, "other-agent")
        r = dave.post("/v1/tokens", json={"ttl_s": 600})
        assert r.status_code == 201 and r.json()["agent_id"] == "dave", r.text
        token = r.json()["token"]
    with api.client(token) as browser:
        assert browser.get("/v1/agents/dave").json()["state"] == "logged_out"
        assert browser.post("/v1/agents/dave/login").status_code == 200
        problem(browser.get("/v1/agents/erin"), 403, "other-agent")
        problem(browser.get("/v1/agents"), 403, "role-forbidden")
        problem(browser.post("/v1/tokens", json={}), 403, "token-cannot-mint")
    claims = jwt.decode(token, TOKEN_SECRET, algorithms=["HS256"], audience="callcenter-api")
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, TOKEN_SECRET, algorithm="HS256")
    forged = jwt.encode({**claims, "sub": "erin"}, "another-secret-of-32-bytes-or-more!", algorithm="HS256")
    with api.client() as c:
        problem(c.get("/v1/agents/dave", headers={"Authorization": f"Bearer {expired}"}), 401, "expired-token")
        problem(c.get("/v1/agents/erin", headers={"Authorization": f"Bearer {forged}"}), 401, "invalid-credentials")
    with api.client(api.admin) as admin:
        admin.delete(f"/v1/keys/{claims['kid']}")
    with api.client(token) as browser:
        problem(browser.get("/v1/agents/dave"), 401, "revoked-key")


def test_no_key_or_token_is_ever_logged(api: ApiProcess) -> None:
    """Runs after the others of this module (which used many keys and tokens): none is in the log."""
    key = api.key("admin", name="secret-check")
    with api.client(key) as c:
        assert c.get("/v1/agents").status_code == 200
        token = c.post("/v1/tokens", json={"agent_id": "alice"}).json()["token"]
    with api.client(token) as c:
        c.get("/v1/agents/alice")
    log = api.process.logfile.read_text(errors="replace")
    assert "GET /v1/agents" in log or "api.started" in log  # the log is the api's and not empty
    for secret in (key.split("_", 2)[2], token, api.admin.split("_", 2)[2]):
        assert secret not in log
