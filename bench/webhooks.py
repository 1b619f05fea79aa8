"""Webhook delivery benchmark: deliveries per second through one celery worker process.

A private redis-server, a migrated SQLite file, a local HTTP receiver (a threaded http.server that
answers 204 at once and counts), one subscription to every event type, and the jobs as real
processes: one `celery worker` (`--pool`, `--concurrency`) and one `celery beat` (the pump every
0.2 s). `--events` `agent.paused` events are appended to `cc:{bench}:events` in one pipeline; the
clock runs from that append until the last delivery is `delivered` in SQL. Each delivery is the
whole path: pump (stream -> SQL row -> queued task), the broker, the worker's signed POST, the
SQL update.

Printed: deliveries/s, the receiver's count (each event exactly once), and the worker's CPU time.

    .venv/bin/python bench/webhooks.py [--quick] [--events 2000] [--pool threads] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from callcenter.contract.codec import encode
from callcenter.db.engine import make_engine, upgrade
from callcenter.db.jobs import WebhookDelivery, WebhookSubscription
from callcenter.store.keys import Keys
from callcenter_dev.jobs import jobs_env, running_jobs
from callcenter_dev.servers import RedisServer

TENANT = "bench"


def receiver() -> tuple[ThreadingHTTPServer, list[int]]:
    got = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                got[0] += 1
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description="webhook deliveries/s through one celery worker")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--pool", default="threads", choices=("solo", "threads", "prefork"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="200 events: checks the rig, not a figure")
    args = parser.parse_args()
    n = 200 if args.quick else args.events

    work = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    server = RedisServer().start()
    http, got = receiver()
    db_url = f"sqlite:///{work / 'cc.sqlite3'}"
    upgrade(db_url)
    engine = make_engine(db_url)
    with Session(engine) as session:
        url = f"http://127.0.0.1:{http.server_address[1]}/hook"
        session.add(WebhookSubscription(id=uuid.uuid4().hex, url=url, event_types="*",
                                        secret="bench-secret-0123456789", created_at=datetime.now(UTC)))
        session.commit()
    env = jobs_env(server.url, db_url, TENANT, CC_JOBS_PUMP_INTERVAL_S="0.2", CC_LOG_LEVEL="warning")
    r = redis.Redis.from_url(server.url)
    events = Keys(TENANT).events
    jobs = running_jobs(env, work, events, worker_args=(f"--pool={args.pool}", f"--concurrency={args.concurrency}"),
                        log_level="warning")
    try:
        with jobs as procs:
            worker = procs.worker
            cpu0 = cpu_s(worker.pid)
            t0 = time.perf_counter()
            pipe = r.pipeline(transaction=False)
            for i in range(n):
                pipe.xadd(events, encode("agent.paused", {"ts": i, "agent_id": "a", "reason": f"bench-{i}"}))  # type: ignore[arg-type]
            pipe.execute()
            deadline = time.monotonic() + max(120, n / 5)
            while True:
                with Session(engine) as session:
                    done = session.scalar(select(func.count()).select_from(WebhookDelivery)
                                          .where(WebhookDelivery.status == "delivered")) or 0
                if done >= n:
                    break
                if time.monotonic() > deadline:
                    sys.exit(f"only {done} of {n} delivered in time; logs in {work}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            cpu = cpu_s(worker.pid) - cpu0
            print(f"{n} deliveries in {elapsed:.2f} s: {n / elapsed:,.0f} deliveries/s through one worker "
                  f"(pool {args.pool}, concurrency {args.concurrency})")
            print(f"receiver got {got[0]} requests (each event once: {got[0] == n}); worker main process CPU "
                  f"{cpu:.2f} s ({1000 * cpu / n:.2f} ms per delivery)")
    finally:
        r.close()
        http.shutdown()
        engine.dispose()
        server.stop()


if __name__ == "__main__":
    main()
