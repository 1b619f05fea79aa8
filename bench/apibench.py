"""Helpers shared by the api benchmarks (bench/api_auth.py, bench/sse_fanout.py): a private
redis-server and SQLite database with api processes on free loopback ports, a process's CPU time and
resident memory read from /proc, percentiles. Reads /proc; writes a temporary directory it removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from callcenter_dev.processes import ServiceProcess, create_api_key
from callcenter_dev.servers import RedisServer, free_port

TENANT = "bench"


def pct(values: list[float], p: float) -> float:
    """The p-quantile (0..1) of `values` by rank; NaN when empty."""
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (/proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` in KiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Rig:
    """One private redis-server and SQLite database; api processes started against them."""

    server: RedisServer
    workdir: Path
    env: dict[str, str]
    apis: list[ServiceProcess] = field(default_factory=list)

    def key(self, *, name: str, role: str, agent_id: str | None = None) -> str:
        return create_api_key(self.env, name=name, role=role, agent_id=agent_id)

    def api(self, **extra_env: str) -> tuple[ServiceProcess, str]:
        """A started api process (extra `CC_*` variables on top of the rig's) and its base URL."""
        port = free_port()
        svc = ServiceProcess("api", {**self.env, "CC_API_PORT": str(port), **extra_env},
                             health_url=f"http://127.0.0.1:{port}/healthz")
        self.apis.append(svc)
        svc.start(timeout=60)
        return svc, f"http://127.0.0.1:{port}"


def pid_of(svc: ServiceProcess) -> int:
    if svc.proc is None:
        raise RuntimeError(f"{svc.name} is not running")
    return svc.proc.pid


@contextmanager
def rig() -> Iterator[Rig]:
    """A Rig, stopped and removed (services, redis-server, files) on the way out."""
    server = RedisServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-api-"))
    env = {"CC_REDIS_URL": server.url, "CC_TENANT": TENANT, "CC_DATABASE_URL": f"sqlite:///{workdir / 'cc.sqlite3'}",
           "CC_LOG_LEVEL": "warning"}
    r = Rig(server, workdir, env)
    try:
        yield r
    finally:
        for svc in r.apis:
            svc.stop()
            svc.logfile.unlink(missing_ok=True)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
