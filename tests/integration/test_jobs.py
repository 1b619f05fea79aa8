"""The celery jobs (services/jobs) as real processes, one worker and one beat shared by the module,
on a private redis-server and a SQLite file, driven through the api (in-process): webhooks signed
and retried against a real local HTTP receiver that fails the first tries, dead and replayed;
webhook URLs refused; interval reports; CDR exports; the SQL purge (issue 12, acceptance 6, 8)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from api_client import running
from celery import Celery
from problems import problem
from sqlalchemy.orm import Session

from callcenter.contract.codec import encode
from callcenter.db.engine import make_engine, upgrade
from callcenter.db.jobs import WebhookDelivery
from callcenter.db.models import Cdr
from callcenter.settings import ApiSettings
from callcenter.store.keys import Keys
from callcenter_dev.jobs import jobs_env, running_jobs
from callcenter_dev.servers import RedisServer

TENANT = "jobs"
KEYS = Keys(TENANT)
MAX_ATTEMPTS = 4
PREFIX = "ccjobs-test:"
REQUEUE_S = 2   # above the longest back-off here (0.1 s x 2^2)


@dataclass
class Receiver:
    """A local HTTP receiver: each path fails (500) its first `fail[path]` requests, then answers 204."""

    port: int = 0
    fail: dict[str, int] = field(default_factory=dict)
    got: list[tuple[str, int, dict[str, str], bytes]] = field(default_factory=list)  # path, answer, headers, body

    def requests(self, path: str) -> list[tuple[int, dict[str, str], bytes]]:
        return [(code, h, b) for p, code, h, b in self.got if p == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            left = rec.fail.get(self.path, 0)
            code = 500 if left else 204
            rec.fail[self.path] = max(left - 1, 0)
            rec.got.append((self.path, code, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(code)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rec
    server.shutdown()


@dataclass
class Jobs:
    redis_url: str
    broker_url: str
    db_url: str
    client: redis.Redis

    def celery(self) -> Celery:
        app = Celery("client", broker=self.broker_url, backend=self.broker_url)
        app.conf.update(broker_transport_options={"global_keyprefix": PREFIX},
                        result_backend_transport_options={"global_keyprefix": PREFIX})
        return app


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobs]:
    """A redis-server of its own (the shared one is flushed by other tests), a migrated SQLite file,
    and `celery worker` + `celery beat` as child processes with fast timings."""
    workdir = tmp_path_factory.mktemp("jobs")
    server = RedisServer().start()
    db_url = f"sqlite:///{workdir / 'cc.sqlite3'}"
    upgrade(db_url)
    env = jobs_env(server.url, db_url, TENANT, CC_JOBS_KEY_PREFIX=PREFIX, CC_JOBS_PUMP_INTERVAL_S="0.2",
                   CC_WEBHOOK_MAX_ATTEMPTS=str(MAX_ATTEMPTS), CC_WEBHOOK_BACKOFF_S="0.1", CC_WEBHOOK_TIMEOUT_S="5",
                   CC_REPORTS_INTERVAL_S="0.5", CC_WEBHOOK_REQUEUE_S=str(REQUEUE_S))
    client = redis.Redis.from_url(server.url)
    try:
        with running_jobs(env, workdir, KEYS.events):
            yield Jobs(server.url, env["CC_JOBS_BROKER_URL"], db_url, client)
    finally:
        client.close()
        server.stop()


@pytest.fixture
async def api(jobs: Jobs) -> AsyncIterator[httpx.AsyncClient]:
    async with running(ApiSettings(redis_url=jobs.redis_url, tenant=TENANT, database_url=jobs.db_url)) as (client, _):
        yield client


def _publish_ended(jobs: Jobs, call_id: str) -> str:
    data = {"ts": 1, "call_id": call_id, "flow": "sales", "caller": "bob", "outcome": "answered",
            "ended_by": "caller", "reason": "bye", "received_ms": 0, "wait_ms": 1, "pickup_ms": 1, "talk_ms": 1,
            "rejections": 0}
    return jobs.client.xadd(KEYS.events, encode("call.ended", data)).decode()  # type: ignore[arg-type, union-attr]


async def _wait(check: Callable[[], Any], within_s: float = 30.0) -> Any:
    deadline = time.monotonic() + within_s
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)
    return value


async def test_a_webhook_is_signed_and_retried_until_the_receiver_takes_it(
        api: httpx.AsyncClient, jobs: Jobs, receiver: Receiver) -> None:
    receiver.fail["/flaky"] = 2
    r = await api.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/flaky",
                                             "event_types": ["call.ended"]})
    assert r.status_code == 201, r.text
    sub = r.json()
    jobs.client.xadd(KEYS.events, encode("agent.logged_in", {"ts": 1, "agent_id": "a"}))  # type: ignore[arg-type]
    event_id = _publish_ended(jobs, "c-flaky")

    async def delivered() -> list[dict[str, Any]]:
        got = (await api.get("/v1/webhooks/deliveries", params={"subscription_id": sub["id"]})).json()
        return [d for d in got if d["status"] == "delivered"]
    (delivery,) = await _wait(delivered)
    assert (delivery["event_id"], delivery["event_type"], delivery["attempts"]) == (event_id, "call.ended", 3)

    attempts = receiver.requests("/flaky")
    assert [code for code, _, _ in attempts] == [500, 500, 204]  # only call.ended: agent.logged_in not sent
    for _code, headers, body in attempts:
        assert headers["x-callcenter-delivery"] == delivery["id"]  # the same id on every attempt
        expected = hmac.new(sub["secret"].encode(), headers["x-callcenter-timestamp"].encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        assert headers["x-callcenter-signature"] == "v1=" + expected
        assert abs(int(headers["x-callcenter-timestamp"]) - time.time()) < 300
    payload = json.loads(attempts[-1][2])
    assert (payload["event_id"], payload["type"], payload["v"], payload["data"]["call_id"]) == (
        event_id, "call.ended", 1, "c-flaky")


async def test_a_delivery_is_dead_after_the_last_try_and_replayed_through_the_api(
        api: httpx.AsyncClient, jobs: Jobs, receiver: Receiver) -> None:
    receiver.fail["/down"] = MAX_ATTEMPTS
    r = await api.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/down", "event_types": ["*"],
                                             "secret": "s" * 32})
    sub = r.json()
    _publish_ended(jobs, "c-down")

    async def dead() -> list[dict[str, Any]]:
        return (await api.get("/v1/webhooks/deliveries", params={"status": "dead",
                                                                  "subscription_id": sub["id"]})).json()
    (delivery,) = await _wait(dead)
    assert delivery["attempts"] == MAX_ATTEMPTS and delivery["last_error"] == "HTTP 500"
    assert len(receiver.requests("/down")) == MAX_ATTEMPTS

    r = await api.post(f"/v1/webhooks/deliveries/{delivery['id']}/replay")
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text

    async def delivered() -> bool:
        d = (await api.get("/v1/webhooks/deliveries", params={"subscription_id": sub["id"]})).json()
        return bool(d[0]["status"] == "delivered")
    await _wait(delivered)
    assert [code for code, _, _ in receiver.requests("/down")] == [500] * MAX_ATTEMPTS + [204]
    problem(await api.post(f"/v1/webhooks/deliveries/{delivery['id']}/replay"), 409, "invalid-state")


async def test_a_delivery_whose_task_was_lost_with_its_worker_is_queued_again(
        api: httpx.AsyncClient, jobs: Jobs, receiver: Receiver) -> None:
    """A worker SIGKILLed while it held a delivery task reserved: the Redis broker gives the task
    back only after its visibility timeout (an hour), so the row stays `queued` with no task (seen
    in tests/e2e/test_replicas.py under load: one webhook never sent). Here the row is written as
    that leaves it; the pump queues it again once it is `CC_WEBHOOK_REQUEUE_S` old, and only then."""
    r = await api.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/lost",
                                             "event_types": ["call.ended"]})
    assert r.status_code == 201, r.text
    sub = r.json()
    delivery_id = "lost" + "0" * 28
    now = datetime.now(UTC)
    with Session(make_engine(jobs.db_url)) as session:
        session.add(WebhookDelivery(id=delivery_id, subscription_id=sub["id"], event_id="1-0",
                                    event_type="call.ended", payload='{"event_id":"1-0"}', status="queued",
                                    attempts=0, created_at=now, updated_at=now))
        session.commit()

    async def delivered() -> bool:
        d = (await api.get("/v1/webhooks/deliveries", params={"subscription_id": sub["id"]})).json()
        return bool(d and d[0]["status"] == "delivered")
    await _wait(delivered, within_s=REQUEUE_S + 20)
    took_s = (datetime.now(UTC) - now).total_seconds()
    assert took_s >= REQUEUE_S, took_s   # not before it was stale: a live task may still hold it
    got = receiver.requests("/lost")
    assert [(code, h["x-callcenter-delivery"]) for code, h, _ in got] == [(204, delivery_id)]


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "http:///nohost", "javascript:alert(1)",
                                 "http://127.0.0.1:8080/v1/flows", "http://localhost:8080/", "http://api/v1/keys",
                                 "http://[::1]:8080/"])
async def test_a_webhook_url_not_http_or_at_the_api_itself_is_refused(api: httpx.AsyncClient, url: str) -> None:
    body = problem(await api.post("/v1/webhooks", json={"url": url, "event_types": ["call.ended"]}),
                   422, "webhook-url-refused")
    assert url[:20] in body["detail"]
    assert all(s["url"] != url for s in (await api.get("/v1/webhooks")).json())


def _cdr(call_id: str, at: datetime, **over: Any) -> Cdr:
    row: dict[str, Any] = {"call_id": call_id, "flow_id": "sales", "caller": "bob", "agent_id": "a1",
                           "received_at": at, "wait_ms": 5000, "pickup_ms": 1000, "talk_ms": 90_000,
                           "outcome": "answered", "ended_by": "caller", "reason": "bye", "rejections": 0,
                           "event_id": "1-" + call_id}
    row.update(over)
    return Cdr(**row)


async def test_interval_reports_exports_and_purge(api: httpx.AsyncClient, jobs: Jobs) -> None:
    now = datetime.now(UTC)
    start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    old = start - timedelta(days=500)
    engine = make_engine(jobs.db_url)
    with Session(engine) as session:
        session.add_all([_cdr("r1", start + timedelta(seconds=1)),
                         _cdr("r2", start + timedelta(seconds=2), wait_ms=60_000, talk_ms=30_000),
                         _cdr("r3", start + timedelta(seconds=3), agent_id=None, outcome="abandoned", talk_ms=0,
                              wait_ms=9000),
                         # an agent attempt of r3 that did not connect: a row of the export, not a call
                         _cdr("r3", start + timedelta(seconds=3), agent_id="a2", outcome="not_connected",
                              talk_ms=0, wait_ms=4000, attempt=1, call_type=-2, event_id="2-r3"),
                         _cdr("old", old)])
        session.commit()
    engine.dispose()

    async def flow_report() -> list[dict[str, Any]]:
        got = (await api.get("/v1/reports/intervals", params={"kind": "flow", "key": "sales",
                                                               "since": start.isoformat()})).json()
        return [r for r in got if r["offered"] == 3]
    (flow,) = await _wait(flow_report)
    assert (flow["answered"], flow["abandoned"], flow["avg_wait_ms"], flow["avg_talk_ms"]) == (2, 1, 24_666, 60_000)
    assert flow["service_level"] == pytest.approx(1 / 3)  # r1 within 20 s; r2 waited 60 s; r3 abandoned
    (agent,) = (await api.get("/v1/reports/intervals", params={"kind": "agent", "key": "a1",
                                                                "since": start.isoformat()})).json()
    assert (agent["offered"], agent["answered"]) == (2, 2)
    assert agent["occupancy"] == pytest.approx(120_000 / 900_000)
    assert (await api.get("/v1/reports/intervals", params={"kind": "agent", "key": "a2",
                                                            "since": start.isoformat()})).json() == []

    exported = {}
    for fmt in ("csv", "jsonl"):
        r = await api.post("/v1/exports", json={"since": start.isoformat(),
                                                "until": (start + timedelta(minutes=15)).isoformat(), "format": fmt})
        assert r.status_code == 202, r.text
        export_id = r.json()["id"]

        async def done(export_id: str = export_id) -> bool:
            return bool((await api.get(f"/v1/exports/{export_id}")).json()["status"] == "done")
        await _wait(done)
        f = await api.get(f"/v1/exports/{export_id}/file")
        assert f.status_code == 200 and f.headers["content-type"].startswith(("text/csv", "application/jsonl"))
        exported[fmt] = f.text
    # the export carries every row, the attempt's too (the reference's cc_cdrs has both kinds)
    assert sorted((r["call_id"], r["attempt"]) for r in csv.DictReader(io.StringIO(exported["csv"]))) == [
        ("r1", "0"), ("r2", "0"), ("r3", "0"), ("r3", "1")]
    assert sorted(json.loads(line)["call_id"] for line in exported["jsonl"].splitlines()) == ["r1", "r2", "r3", "r3"]

    # the purge, sent to the worker through the broker and its result read from the result backend
    purged = jobs.celery().send_task("callcenter_jobs.purge.purge").get(timeout=30)
    assert purged["cdrs"] == 1  # only the 500-day-old CDR (kept 400 days by default)
    left = (await api.get("/v1/cdrs", params={"order": "asc", "kind": "final"})).json()["items"]
    assert sorted(c["call_id"] for c in left) == ["r1", "r2", "r3"]
