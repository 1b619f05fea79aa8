"""The celery jobs (services/jobs) as real processes for tests and benchmarks: one `celery worker`
and one `celery beat`, each in a session of its own, logging into a work directory.

`jobs_env(...)` is the environment they need (the broker and result backend in Redis database 1 of
the given server), `running_jobs(env, workdir, events_stream)` starts both, waits until the pump
has attached its consumer group (`webhooks`) to the events stream, so events from then on reach
the subscriptions, and stops both at the end (SIGTERM to each process group, SIGKILL after 15 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

PUMP_GROUP = "webhooks"


def jobs_env(redis_url: str, database_url: str, tenant: str, **settings: str) -> dict[str, str]:
    """The jobs' environment: this process's, the service settings, the broker in database 1 of the
    same Redis, and `settings` (CC_* names) over them."""
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    return {**os.environ, "CC_REDIS_URL": redis_url, "CC_TENANT": tenant, "CC_DATABASE_URL": database_url,
            "CC_JOBS_BROKER_URL": broker, "CC_JOBS_RESULT_URL": broker, **settings}


@dataclass
class JobsProcesses:
    """The running worker and beat, and where their logs are."""

    worker: subprocess.Popen[bytes]
    beat: subprocess.Popen[bytes]
    workdir: Path

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{(self.workdir / f'{name}.log').read_text(errors='replace')[-3000:]}"
                         for name in ("worker", "beat"))

    def stop(self) -> None:
        for proc in (self.worker, self.beat):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (self.worker, self.beat):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _has_group(client: redis.Redis, stream: str, group: str) -> bool:
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    return any(g["name"] == group.encode() for g in groups)


@contextmanager
def running_jobs(env: dict[str, str], workdir: Path, events_stream: str, *, worker_args: tuple[str, ...] = (
        "--pool=solo",), log_level: str = "info", attach_within_s: float = 60.0) -> Iterator[JobsProcesses]:
    """`celery worker` (with `worker_args`) and `celery beat` of `callcenter_jobs.app`, started and
    attached to `events_stream`; stopped on leaving."""
    celery = [sys.executable, "-m", "celery", "-A", "callcenter_jobs.app"]
    started: list[subprocess.Popen[bytes]] = []
    for name, args in (("worker", ["worker", *worker_args, "-l", log_level, "-n", "w1@%h"]),
                       ("beat", ["beat", "-l", log_level, "-s", str(workdir / "beat-schedule")])):
        with (workdir / f"{name}.log").open("wb") as log:
            started.append(subprocess.Popen([*celery, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True))
    procs = JobsProcesses(started[0], started[1], workdir)
    client = redis.Redis.from_url(env["CC_REDIS_URL"])
    try:
        deadline = time.monotonic() + attach_within_s
        while not _has_group(client, events_stream, PUMP_GROUP):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the jobs' pump never attached its group to {events_stream}:\n{procs.logs()}")
            time.sleep(0.1)
        yield procs
    finally:
        client.close()
        procs.stop()
