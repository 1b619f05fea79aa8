"""Many replicas of every service in one run (issue 13, acceptance 2), all real processes on loopback
against one redis-server: N sip-edges (each its own SIP port and edge id), N dispatchers, N
cdr-writers, N api processes (each its own port) and N celery workers with one beat.

    replicas = Replicas.start(workdir, Counts(edges=2, dispatchers=3, cdr_writers=2, apis=2, workers=2))
    replicas.targets        # ["127.0.0.1:<edge 1 port>", "127.0.0.1:<edge 2 port>"]: spread callers over them
    replicas.apis           # one httpx client per api process (the admin key)
    replicas.kill("dispatcher-2"); replicas.restart("sip-edge-2")
    replicas.stop()

It is a `WholeSystem` (callcenter_dev.system) with the extra processes added beside the first of
each kind: the names in `system.services` are "sip-edge", "sip-edge-2", "dispatcher",
"dispatcher-2", "dispatcher-3", ...; every extra process has its own health port and consumer name
(two pods never share either). The celery processes are in `jobs` ("worker", "worker-2", "beat"),
with their broker in database 1 of the same redis-server, under a key prefix of their own. Every
process reads the one SQLite file (`workdir/cc.sqlite3`).

The edges are not in an address group (CC_EDGE_GROUP): each has its own address here, so a killed
edge's calls cannot be handed to the other one (docs/operations.md, "One SIP address, several edges").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from callcenter_dev.edge_restart import restart_on_its_port
from callcenter_dev.jobs import JobsProcess, jobs_beat, jobs_env, jobs_worker
from callcenter_dev.servers import RedisServer
from callcenter_dev.system import WholeSystem

JOBS_PREFIX = "ccjobs-replicas:"


@dataclass(frozen=True)
class Counts:
    """How many processes of each service."""

    edges: int = 2
    dispatchers: int = 3
    cdr_writers: int = 2
    apis: int = 2
    workers: int = 2    # celery workers; beat is always one

    def __post_init__(self) -> None:
        if min(self.edges, self.dispatchers, self.cdr_writers, self.apis) < 1 or self.workers < 0:
            raise ValueError(f"at least one of each service: {self}")


DEFAULT = Counts()   # 2 edges, 3 dispatchers, 2 cdr-writers, 2 apis, 2 celery workers


def numbered(base: str, n: int) -> str:
    """The name of the n-th (1-based) process of `base`: "dispatcher", "dispatcher-2", ..."""
    return base if n == 1 else f"{base}-{n}"


@dataclass
class Replicas:
    """Every service `counts` times against one redis-server; see the module's docstring."""

    system: WholeSystem
    counts: Counts
    jobs: dict[str, JobsProcess] = field(default_factory=dict)
    apis: list[httpx.Client] = field(default_factory=list)
    # the celery broker on a Redis Cluster or Sentinel topology: a plain redis-server of its own
    # (celery's Redis transport does not speak Cluster; docs/operations.md, CC_JOBS_BROKER_URL)
    broker: RedisServer | None = None

    @classmethod
    def start(cls, workdir: Path, counts: Counts = DEFAULT, *, tenant: str = "replicas",
              edge_id: str = "edge-r", common_env: dict[str, str] | None = None,
              edge_env: dict[str, str] | None = None, dispatcher_env: dict[str, str] | None = None,
              jobs_env: dict[str, str] | None = None, redis_appendonly: bool = False) -> Replicas:
        system = WholeSystem.start(workdir, tenant=tenant, edge_id=edge_id, common_env=common_env,
                                   edge_env=edge_env, dispatcher_env=dispatcher_env,
                                   redis_appendonly=redis_appendonly)
        replicas = cls(system=system, counts=counts)
        try:
            for base, n in (("dispatcher", counts.dispatchers), ("cdr-writer", counts.cdr_writers),
                            ("api", counts.apis), ("sip-edge", counts.edges)):
                for i in range(2, n + 1):
                    system.add_service(base, numbered(base, i), suffix=str(i))
            for i in range(1, counts.apis + 1):
                port = system.services[numbered("api", i)].env["CC_API_PORT"]
                replicas.apis.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                                  headers={"Authorization": f"Bearer {system.admin_key}"}))
            if counts.workers:
                replicas._start_jobs(workdir, jobs_env or {})
        except BaseException:
            replicas.stop()
            raise
        return replicas

    def _start_jobs(self, workdir: Path, extra: dict[str, str]) -> None:
        api = self.system.api_env
        if not api["CC_REDIS_URL"].startswith("redis://"):
            self.broker = RedisServer().start()
            extra = {"CC_JOBS_BROKER_URL": self.broker.url, "CC_JOBS_RESULT_URL": self.broker.url, **extra}
        env = jobs_env(api["CC_REDIS_URL"], api["CC_DATABASE_URL"], api["CC_TENANT"],
                       CC_JOBS_KEY_PREFIX=JOBS_PREFIX, CC_JOBS_PUMP_INTERVAL_S="0.5", CC_WEBHOOK_BACKOFF_S="0.2",
                       CC_WEBHOOK_TIMEOUT_S="5",
                       # a delivery task reserved by the SIGKILLed worker is queued again after this
                       CC_WEBHOOK_REQUEUE_S="30", **extra)
        for i in range(1, self.counts.workers + 1):
            worker = jobs_worker(env, i)
            self.jobs[worker.name] = worker.start()
        self.jobs["beat"] = jobs_beat(env, workdir).start()

    # -- what the test drives ------------------------------------------------------------------
    @property
    def edges(self) -> list[str]:
        return [numbered("sip-edge", i) for i in range(1, self.counts.edges + 1)]

    @property
    def targets(self) -> list[str]:
        """Each edge's SIP address, in the order of `edges`."""
        return [f"127.0.0.1:{self.system.services[e].env['CC_SIP_PORT']}" for e in self.edges]

    def edge_id(self, name: str) -> str:
        return self.system.services[name].env["CC_EDGE_ID"]

    def pids(self) -> dict[str, int | None]:
        """The process id of every running process; None for one that is not running."""
        procs = {name: svc.proc for name, svc in self.system.services.items()}
        procs.update({name: j.proc for name, j in self.jobs.items()})
        return {name: p.pid if p is not None and p.poll() is None else None for name, p in procs.items()}

    def kill(self, name: str) -> None:
        """SIGKILL one process: a key of `system.services` or of `jobs`."""
        if name in self.jobs:
            self.jobs[name].kill()
        else:
            self.system.kill_service(name)

    def restart(self, name: str, lapse_ms: int = 5000) -> None:
        """Start a process again as a supervisor does: same environment, port, id and log file. An
        edge binds its port only once it holds its id again (the dead one's lease lives half the
        lapse, services/sip-edge/README.md): wait until it holds it, up to the lapse + 10 s, starting
        it again if another process took the port meanwhile (callcenter_dev.edge_restart)."""
        if name in self.jobs:
            old = self.jobs[name]
            old.stop()
            self.jobs[name] = JobsProcess(old.name, old.args, old.env, logfile=old.logfile).start()
            return
        svc = self.system.services[name]
        if svc.name == "sip-edge":
            self.system.services[name] = restart_on_its_port(svc, timeout_s=lapse_ms / 1000 + 10)
            return
        self.system.restart_service(name)

    def logs(self) -> str:
        return self.system.logs() + "".join(f"\n--- celery {n}\n{j.log()}" for n, j in self.jobs.items())

    def stop(self) -> None:
        for client in self.apis:
            client.close()
        for j in self.jobs.values():
            j.stop()
        if self.broker is not None:
            self.broker.stop()
        self.system.stop()
