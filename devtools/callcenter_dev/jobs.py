"""The celery jobs (services/jobs) as real processes for tests and benchmarks: `callcenter-jobs
worker` and `callcenter-jobs beat`, each a `JobsProcess` in a session of its own, logging into a file.

`jobs_env(...)` is the environment they need (the broker and result backend in Redis database 1 of
the given server); `jobs_worker(...)` and `jobs_beat(...)` are the two kinds of process (the replicas
of callcenter_dev.replicas start several workers); `running_jobs(env, workdir, events_stream)`
starts one of each, waits until the pump has attached its consumer group (`webhooks`) to the
events stream, so events from then on reach the subscriptions, and stops both at the end (SIGTERM
to each process group, SIGKILL after 20 s).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import redis

from callcenter_dev.processes import ChildProcess, console_script
from callcenter_dev.sipp import wait_until

PUMP_GROUP = "webhooks"


def jobs_env(redis_url: str, database_url: str, tenant: str, **settings: str) -> dict[str, str]:
    """The jobs' environment: this process's, the service settings, the broker in database 1 of the
    same Redis, and `settings` (CC_* names) over them."""
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    return {**os.environ, "CC_REDIS_URL": redis_url, "CC_TENANT": tenant, "CC_DATABASE_URL": database_url,
            "CC_JOBS_BROKER_URL": broker, "CC_JOBS_RESULT_URL": broker, **settings}


@dataclass
class JobsProcess(ChildProcess):
    """`callcenter-jobs worker` or `beat`, its environment and log file."""

    stop_timeout_s: ClassVar[float] = 20.0
    own_session: ClassVar[bool] = True

    name: str                     # "worker", "worker-2", "beat"
    args: list[str]
    env: dict[str, str]
    logfile: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="cc-jobs-", suffix=".log")[1]))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"celery {self.name} was not started"
        return self.proc.pid

    def start(self, timeout: float = 60.0, *, wait_ready: bool = True) -> JobsProcess:
        """Start it; with `wait_ready`, wait until it says it runs (a worker: `ready.`; beat:
        `Starting...`, both logged at level info)."""
        out = open(self.logfile, "ab")  # owned by the child for its lifetime
        size = self.logfile.stat().st_size
        self.proc = subprocess.Popen([console_script("jobs"), *self.args], env={**os.environ, **self.env},
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_ready:
            return self
        mark = "ready." if self.args[0] == "worker" else "Starting..."

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"celery {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            with open(self.logfile, "rb") as f:
                f.seek(size)
                return mark.encode() in f.read()
        if not wait_until(up, timeout, interval=0.1):
            self.stop()
            raise RuntimeError(f"celery {self.name} did not start in {timeout} s:\n{self.log()}")
        return self


def jobs_worker(env: dict[str, str], n: int = 1, *, pool_args: tuple[str, ...] = ("--pool=solo",),
                log_level: str = "info", logfile: Path | None = None) -> JobsProcess:
    """The n-th (1-based) celery worker: named "worker", "worker-2", ...; node `w<n>@<host>`. The
    solo pool is one process, so SIGKILL kills all of it."""
    name = "worker" if n == 1 else f"worker-{n}"
    args = ["worker", *pool_args, "-l", log_level, "-n", f"w{n}@%h"]
    return JobsProcess(name, args, env) if logfile is None else JobsProcess(name, args, env, logfile=logfile)


def jobs_beat(env: dict[str, str], workdir: Path, *, log_level: str = "info", logfile: Path | None = None
              ) -> JobsProcess:
    """celery beat, its schedule file in `workdir`."""
    args = ["beat", "-l", log_level, "-s", str(workdir / "beat-schedule")]
    return JobsProcess("beat", args, env) if logfile is None else JobsProcess("beat", args, env, logfile=logfile)


@dataclass
class JobsProcesses:
    """The running worker and beat of `running_jobs`."""

    worker: JobsProcess
    beat: JobsProcess

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()}" for p in (self.worker, self.beat))

    def stop(self) -> None:
        for proc in (self.worker, self.beat):
            proc.stop()


def _has_group(client: redis.Redis, stream: str, group: str) -> bool:
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    return any(g["name"] == group.encode() for g in groups)


@contextmanager
def running_jobs(env: dict[str, str], workdir: Path, events_stream: str, *, worker_args: tuple[str, ...] = (
        "--pool=solo",), log_level: str = "info", attach_within_s: float = 60.0) -> Iterator[JobsProcesses]:
    """A celery worker (with `worker_args`) and beat, logging into `workdir` (worker.log, beat.log),
    started and attached to `events_stream`; stopped on leaving."""
    procs = JobsProcesses(
        worker=jobs_worker(env, pool_args=worker_args, log_level=log_level, logfile=workdir / "worker.log"),
        beat=jobs_beat(env, workdir, log_level=log_level, logfile=workdir / "beat.log"))
    client = redis.Redis.from_url(env["CC_REDIS_URL"])
    try:
        procs.worker.start(wait_ready=False)
        procs.beat.start(wait_ready=False)
        deadline = time.monotonic() + attach_within_s
        while not _has_group(client, events_stream, PUMP_GROUP):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the jobs' pump never attached its group to {events_stream}:\n{procs.logs()}")
            time.sleep(0.1)
        yield procs
    finally:
        client.close()
        procs.stop()
