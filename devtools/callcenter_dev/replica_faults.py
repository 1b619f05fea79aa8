"""The fault suite over many replicas (issue 13, acceptance 2): the rig of callcenter_dev.faults on
`Replicas` (2 sip-edges, 3 dispatchers, 2 cdr-writers, 2 apis, 2 celery workers and beat by
default), the callers spread evenly over the edges (one SIPp caller per edge, as an SBC or SRV
records spread them), and a fault that SIGKILLs one process of each kind in turn while the load runs.

    rig = ReplicaRig.start_many(workdir, Counts(), agents=40)
    result = rig.run(in_turn(STEPS, gap_s=4), Load(rate=15, duration_s=30, fault_at=0.15))
    rig.stop()

The measurement is `Rig.measure` (FaultResult): every call SIPp made, its CDR, agents, live calls,
pending and dead entries; plus here the `webhooks` group of the celery pump among the pending ones.
A killed edge's calls are the only failed calls the fault explains (CDR reason edge_restarted or
edge_lost; `FaultResult.explained_edges` says whose they were).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import redis

from callcenter_dev.faults import FLOW, Fault, Rig
from callcenter_dev.replicas import DEFAULT, Counts, Replicas
from callcenter_dev.sipp import Sipp

WEBHOOKS_GROUP = "webhooks"


@dataclass(frozen=True)
class Step:
    """SIGKILL one process (a name of `Replicas`), and start it again at once or leave it dead."""

    process: str
    restart: bool


# one of each kind, the order and the choice of restarting as a supervisor might do
STEPS = (Step("dispatcher-2", restart=False), Step("cdr-writer-2", restart=True), Step("api-2", restart=True),
         Step("worker-2", restart=False), Step("sip-edge-2", restart=True), Step("beat", restart=True))


def in_turn(steps: tuple[Step, ...] = STEPS, gap_s: float = 4.0) -> Fault:
    """A fault of several steps: the first at the strike, each next one `gap_s` later, all while the
    callers go on. A killed edge (restarted on its port and id) ends the calls it held that were not
    talking (edge_restarted; edge_lost if it comes back after the lapse): the only failed calls the
    fault explains. Its deaf time (kill until it listens again) widens the talk-time tolerance."""
    def step(rig: Rig, s: Step) -> None:
        assert isinstance(rig, ReplicaRig) and rig.replicas is not None
        started = time.monotonic()
        rig.replicas.kill(s.process)
        if s.restart:
            rig.replicas.restart(s.process, rig.lapse_ms)
        if s.process.startswith("sip-edge"):
            rig.deaf_ms = max(rig.deaf_ms, int((time.monotonic() - started) * 1000))

    def strike(rig: Rig) -> None:
        step(rig, steps[0])

    def recover(rig: Rig) -> None:
        for s in steps[1:]:
            time.sleep(gap_s)
            step(rig, s)
    doc = f"SIGKILL in turn, every {gap_s:g} s: " + ", ".join(
        f"{s.process}{' (restarted)' if s.restart else ''}" for s in steps)
    return Fault("replicas-in-turn", doc, strike, recover, explains=frozenset({"edge_restarted", "edge_lost"}))


@dataclass
class ReplicaRig(Rig):
    """`Rig` on `Replicas`: the callers spread over every edge."""

    replicas: Replicas | None = None

    @classmethod
    def start_many(cls, workdir: Path, counts: Counts = DEFAULT, *, agents: int = 40, lapse_ms: int = 3000,
                   heartbeat_ms: int = 500, log_level: str = "warning", lifetime_s: float = 3600) -> ReplicaRig:
        replicas = Replicas.start(workdir, counts, tenant="replicas", edge_id="edge-r",
                                  common_env=cls.common_env(lapse_ms, log_level),
                                  edge_env=cls.edge_env(heartbeat_ms, 10.0),
                                  dispatcher_env={"CC_CLAIM_IDLE_MS": "2000"}, redis_appendonly=True)
        peers: list[Sipp] = []
        try:
            queue, phones = cls.start_peers(peers, lifetime_s)
            ids = [f"r{n:03d}" for n in range(agents)]
            # provisioned through the first api, logged in through the last: both serve
            replicas.system.provision(FLOW, None, queue, {a: f"sip:{a}@{phones.uri_host}" for a in ids})
            for a in ids:
                r = replicas.apis[-1].post(f"/v1/agents/{a}/login")
                assert r.status_code == 200, r.text
        except BaseException:
            for p in peers:
                p.stop()
            replicas.stop()
            raise
        return cls(system=replicas.system, workdir=workdir, agents=ids, peers=peers, lapse_ms=lapse_ms,
                   drain_s=10.0, replicas=replicas)

    def stop(self) -> None:
        for p in self.peers:
            p.stop()
        if self.replicas is not None:
            self.replicas.stop()

    def targets(self) -> list[str]:
        assert self.replicas is not None
        return self.replicas.targets

    def _pids(self) -> dict[str, int | None]:
        assert self.replicas is not None
        out = self.replicas.pids()
        # one redis-server on the single topology; a cluster or sentinel one has several: not counted
        proc = getattr(self.system.server, "proc", None)
        out["redis-server"] = proc.pid if proc else None
        return out

    def _pending(self) -> dict[str, int]:
        out = super()._pending()
        try:
            groups = self.system.redis.xinfo_groups(self.system.keys.events)
        except redis.ResponseError:
            groups = []
        if any(g["name"] == WEBHOOKS_GROUP.encode() for g in groups):
            out[WEBHOOKS_GROUP] = int(self.system.redis.xpending(self.system.keys.events, WEBHOOKS_GROUP)["pending"])
        return out
