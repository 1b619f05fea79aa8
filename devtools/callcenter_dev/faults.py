"""The fault suite (issue 9, acceptance 5): one fault injected into the whole system under SIPp load,
then measured from outside.

A `Rig` is the whole system (`WholeSystem`, redis-server with its AOF) with SIPp peers: one queue
media server, one phone for every agent (answers at once) and `agents` agents logged in on one flow.
`Rig.run(fault, load)` plays `load.calls` callers at `load.rate` calls/s: the first part of them,
then the fault's `strike` at `load.fault_at` of the load, the rest of the callers at once (at the
address the system serves then: a rolling update of the edge moves it) while the fault's `recover`
runs, then waits for the callers to finish and up to `load.settle_s` for the system to be quiet.

It measures what an operator can see, and returns a `FaultResult`:
- reads SIPp's -trace_stat files (calls created) and the logged caller's log file (per Call-ID:
  talk started, BYE sent, BYE answered, caller_logged.xml: a call is ok once its BYE is answered);
- reads `cc:{t}:reports` (report.call_arrived: SIP Call-ID -> call id), the CDRs in the SQL
  database (sqlite), the agents' state, `cc:{t}:calls`, the consumer groups' pending entries and
  `cc:{t}:dead` in Redis.
It writes nothing but what the faults do to the processes.

"Loss" is any of: a call SIPp saw fail that the fault's documented semantics do not explain (they
explain a failed call only by its CDR's reason, `Fault.explains`); a call without a CDR; a wrong
CDR (SIPp completed the call but the CDR is not `answered`/`caller`, or its talk time differs from
the caller's by more than TALK_TOLERANCE_MS, plus `Fault.deaf`'s allowance); two calls for one
SIP Call-ID; an agent not free, a live call, a pending or a dead entry left once the system had
`settle_s` to be quiet.

Redis runs with `appendonly yes` and `appendfsync everysec` (redis's default): the faults restart
redis-server as an operator does (SIGTERM: it writes its AOF out before it exits), which loses
nothing with everysec; `always` would only matter for a crash of the host, which everysec may cost
up to a second of acknowledged writes and no client can make up for.
"""

from __future__ import annotations

import csv
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from callcenter.contract.codec import decode
from callcenter_dev.processes import ServiceProcess
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import udp_port_bound
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem

# how far a CDR's talk time may be from the caller's (its talk started at the agent's re-INVITE's ACK,
# ended at its BYE): the edge's clock of the same moments, plus a loaded machine's scheduling
TALK_TOLERANCE_MS = 1500
SIP_T1_MS = 500   # the callers' retransmission timer (retrans="500")
FLOW = "faults"
# a phone that answers at once (one SIPp for every agent: the agent is the Request-URI user)
QUICK_PHONE = Path(__file__).resolve().parents[2] / "bench" / "sipp" / "agent_answers.xml"


@dataclass(frozen=True)
class Load:
    """The SIPp load a fault is injected into."""

    rate: float = 20.0          # calls/s
    duration_s: float = 30.0    # seconds of new calls
    talk_ms: int = 1000         # each caller talks this long to its agent, then hangs up
    fault_at: float = 0.4       # the fault strikes at this fraction of the load
    settle_s: float = 30.0      # after the callers finished, at most this long for the system to be quiet
    call_timeout_s: float = 30.0  # a caller waiting longer than this for a message fails (-recv_timeout)

    @property
    def calls(self) -> int:
        return max(2, round(self.rate * self.duration_s))


@dataclass(frozen=True)
class Fault:
    """One fault: what it does to the system and which failed calls its semantics explain."""

    name: str
    doc: str
    strike: Callable[[Rig], None]
    recover: Callable[[Rig], None] = lambda rig: None
    prepare: Callable[[Rig], None] = lambda rig: None   # before the load
    explains: frozenset[str] = frozenset()   # CDR reasons of calls the fault may end
    # no process listens on the SIP address from the strike until `recover` returns (d): a BYE sent
    # meanwhile is heard only at its first retransmission after that, which RFC 3261's doubling
    # timer (T1, 2 T1, 4 T1, ...) sends less than 2 d + T1 after the BYE: a CDR's talk time may be
    # that much longer, and no process could know better
    deaf: bool = False
    # callers wait at least this long for a message (-recv_timeout): a Redis outage holds the answer
    # of every call that arrives meanwhile for as long as it lasts (0: the load's call_timeout_s)
    patience_s: float = 0.0
    # run by bench/faults.py only, not by the CI suite (tests/e2e/test_faults.py): too long for it
    bench_only: bool = False
    # the rest of the load starts only once `recover` returned (new calls go elsewhere meanwhile, as
    # a load balancer does while the only edge is replaced: the old one turns them away with 503)
    load_waits: bool = False


@dataclass
class FaultResult:
    """What one fault did, measured from outside; `losses` says what was lost (empty: nothing)."""

    fault: str
    calls: int = 0            # calls SIPp created
    ok: int = 0               # completed as the scenario says
    failed: int = 0
    explained: int = 0        # failed calls the fault's semantics explain (by their CDR's reason)
    arrived: int = 0          # calls the system knew (report.call_arrived)
    cdrs: int = 0
    wrong: int = 0
    duplicates: int = 0
    stuck_agents: int = 0
    live_calls: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    dead: int = 0
    seconds: float = 0.0
    tolerance_ms: int = TALK_TOLERANCE_MS   # how far a CDR's talk time may be from the caller's
    worst_ms: int = 0    # the largest difference of a completed call's CDR talk time from the caller's
    replaced: list[str] = field(default_factory=list)   # processes the fault killed or replaced
    attempt_rows: int = 0   # CDR rows of agent attempts that did not connect (attempt >= 1)
    explained_edges: dict[str, int] = field(default_factory=dict)   # explained failed calls by their CDR's edge
    losses: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)   # the first few calls behind the losses

    @property
    def lost(self) -> bool:
        return bool(self.losses)

    HEADER = (f"{'fault':<24} {'calls':>5} {'ok':>5} {'fail':>4} {'expl':>4} {'cdrs':>5} {'wrong':>5} {'dup':>3} "
              f"{'stuck':>5} {'live':>4} {'pend':>4} {'dead':>4} {'worst':>5} {'tol ms':>6} {'secs':>5}  loss")

    def row(self) -> str:
        return (f"{self.fault:<24} {self.calls:>5} {self.ok:>5} {self.failed:>4} {self.explained:>4} "
                f"{self.cdrs:>5} {self.wrong:>5} {self.duplicates:>3} {self.stuck_agents:>5} {self.live_calls:>4} "
                f"{sum(self.pending.values()):>4} {self.dead:>4} {self.worst_ms:>5} {self.tolerance_ms:>6} "
                f"{self.seconds:>5.0f}  "
                + ("; ".join(self.losses) if self.losses else "none"))


# ----------------------------------------------------------------------------------- the faults
def _kill_restart(name: str, late: bool = False) -> tuple[Callable[[Rig], None], Callable[[Rig], None]]:
    def strike(rig: Rig) -> None:
        rig.system.kill_service(name)

    def recover(rig: Rig) -> None:
        if late:   # past the lapse: the dispatchers declare the edge lost first
            time.sleep(rig.lapse_ms / 1000 + 1.5)
        rig.system.restart_service(name)
        if name == "sip-edge":
            # the new process binds the port only once it holds the id: the dead one's lease lives
            # half the lapse (services/sip-edge/README.md); until then the address is deaf
            wait_until(lambda: udp_port_bound(rig.system.sip_port), rig.lapse_ms / 1000 + 10)
    return strike, recover


def _rolling(name: str) -> tuple[Callable[[Rig], None], Callable[[Rig], None]]:
    old: list[ServiceProcess] = []

    def strike(rig: Rig) -> None:
        rig.generation += 1
        old.append(rig.system.rolling_update(name, f"r{rig.generation}"))

    def recover(rig: Rig) -> None:
        proc = old.pop()
        code = proc.stop(timeout=rig.drain_s + 20)
        # uvicorn (the api) shuts down gracefully on SIGTERM, then raises it again: it exits -15
        if code not in (0, None) and not (name == "api" and code == -signal.SIGTERM):
            raise RuntimeError(f"the old {name} exited with {code} on SIGTERM:\n{proc.log()}")
    return strike, recover


def _edge_replaced_on_its_address() -> tuple[Callable[[Rig], None], Callable[[Rig], None]]:
    """SIGTERM the edge; once it has drained and exited, start the new one on its id and address (a
    StatefulSet's rolling update)."""
    old: list[ServiceProcess] = []

    def strike(rig: Rig) -> None:
        # the calls of the load so far are all in (one still on its way would get the drain's 503)
        wait_until(lambda: rig.arrivals() >= rig.struck_after, 10)
        old.append(rig.system.edge)
        assert old[-1].proc is not None
        old[-1].proc.terminate()

    def recover(rig: Rig) -> None:
        proc = old.pop()
        code = proc.stop(timeout=rig.drain_s + 20)
        if code != 0:
            raise RuntimeError(f"the old sip-edge exited with {code} on SIGTERM:\n{proc.log()}")
        rig.system.restart_edge()
        wait_until(lambda: udp_port_bound(rig.system.sip_port), rig.lapse_ms / 1000 + 10)
    return strike, recover


def _redis(down_s: Callable[[Rig], float]) -> tuple[Callable[[Rig], None], Callable[[Rig], None]]:
    def strike(rig: Rig) -> None:
        rig.system.stop_redis()

    def recover(rig: Rig) -> None:
        time.sleep(down_s(rig))
        rig.system.start_redis()
    return strike, recover


def _fixed(seconds: float) -> Callable[[Rig], float]:
    return lambda rig: seconds


def _second_dispatcher(rig: Rig) -> None:
    rig.generation += 1
    rig.system.add_service("dispatcher", "dispatcher-2", suffix=f"d{rig.generation}")


def _kill_first_dispatcher(rig: Rig) -> None:
    rig.system.kill_service("dispatcher")


def _survivor_takes_over(rig: Rig) -> None:
    rig.system.services["dispatcher"] = rig.system.services.pop("dispatcher-2")


def _faults() -> dict[str, Fault]:
    out: dict[str, Fault] = {}
    for name in ("dispatcher", "cdr-writer", "api"):
        strike, recover = _kill_restart(name)
        out[f"{name}-kill"] = Fault(f"{name}-kill", f"SIGKILL the {name}, restart it at once", strike, recover)
    strike, recover = _kill_restart("sip-edge")
    out["sip-edge-kill"] = Fault(
        "sip-edge-kill", "SIGKILL the sip-edge, restart it at once (same id and address): talking calls are "
        "adopted, the others end with reason edge_restarted", strike, recover, explains=frozenset({"edge_restarted"}),
        deaf=True)
    strike, recover = _kill_restart("sip-edge", late=True)
    out["sip-edge-kill-late"] = Fault(
        "sip-edge-kill-late", "SIGKILL the sip-edge, restart it after the lapse: its calls end with reason "
        "edge_lost (no BYE to the peers)", strike, recover, explains=frozenset({"edge_lost", "edge_restarted"}),
        deaf=True)
    for name in ("dispatcher", "cdr-writer", "api", "sip-edge"):
        strike, recover = _rolling(name)
        out[f"{name}-term"] = Fault(
            f"{name}-term", f"rolling update of the {name}: start a new one"
            + (" on a new address with its own id" if name == "sip-edge" else "") + ", then SIGTERM the old one",
            strike, recover)
    strike, recover = _edge_replaced_on_its_address()
    out["sip-edge-term-same-address"] = Fault(
        "sip-edge-term-same-address", "rolling update of the sip-edge on its address and id: SIGTERM it, "
        "start the new one once it has drained and exited; new calls wait meanwhile (a load balancer's "
        "job); a call longer than the drain would end edge_shutdown", strike, recover,
        explains=frozenset({"edge_shutdown"}), load_waits=True)
    strike, recover = _redis(lambda rig: 2.0)
    out["redis-restart-2s"] = Fault("redis-restart-2s", "stop redis-server (SIGTERM, AOF), start it 2 s later",
                                    strike, recover)
    strike, recover = _redis(lambda rig: rig.lapse_ms / 1000 + 3)
    out["redis-restart-long"] = Fault("redis-restart-long", "stop redis-server, start it again after the lapse + 3 s",
                                      strike, recover)
    for down_s in (10, 60):
        strike, recover = _redis(_fixed(float(down_s)))
        out[f"redis-restart-{down_s}s"] = Fault(
            f"redis-restart-{down_s}s", f"stop redis-server, start it {down_s} s later (callers arriving meanwhile "
            "wait for it)", strike, recover, patience_s=down_s + 60.0, bench_only=down_s > 10)
    out["two-dispatchers-kill-one"] = Fault(
        "two-dispatchers-kill-one", "two dispatchers; SIGKILL one, the other takes its pending reports",
        _kill_first_dispatcher, _survivor_takes_over, prepare=_second_dispatcher)
    return out


FAULTS: dict[str, Fault] = _faults()


# ----------------------------------------------------------------------------------- the rig
@dataclass
class Rig:
    """The whole system with its SIPp peers and logged-in agents, shared by the faults run on it."""

    system: WholeSystem
    workdir: Path
    agents: list[str]
    peers: list[Sipp]
    lapse_ms: int
    drain_s: float
    generation: int = 0
    since_ms: int = 0      # the running fault's start on Redis's clock
    struck_after: int = 0  # how many of its calls come before its strike
    # set by a fault that makes one SIP address deaf for a while (ms) without being `deaf` for all
    # of its recovery (a fault of several steps): the same allowance as `Fault.deaf`, for that time
    deaf_ms: int = 0

    @staticmethod
    def common_env(lapse_ms: int, log_level: str) -> dict[str, str]:
        """Every service's settings under a rig: no wrap-up, ring 10 s, callers queued with no agent free."""
        return {"CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "10", "CC_EDGE_LAPSE_MS": str(lapse_ms),
                "CC_LOG_LEVEL": log_level, "CC_REJECT_ON_NO_AGENTS": "false"}

    @staticmethod
    def edge_env(heartbeat_ms: int, drain_s: float) -> dict[str, str]:
        """The edge's under a rig: no INVITE rate limit (the load is the test's)."""
        return {"CC_HEARTBEAT_INTERVAL_MS": str(heartbeat_ms), "CC_SIP_INVITE_RATE": "0",
                "CC_SIP_INVITE_RATE_TOTAL": "0", "CC_DRAIN_TIMEOUT_S": str(drain_s)}

    @staticmethod
    def start_peers(peers: list[Sipp], lifetime_s: float) -> tuple[Sipp, Sipp]:
        """The queue media and the agents' phones, for any number of calls; appended to `peers` as
        they start (so a failure stops those already started). Returns (queue, phones)."""
        phone = QUICK_PHONE if QUICK_PHONE.exists() else scenario("agent.xml")
        for scen in (scenario("media_queue.xml"), phone):
            peers.append(Sipp(scen, calls=10_000_000, timeout_s=lifetime_s, extra=["-l", "100000"]).start())
        queue, phones = peers
        return queue, phones

    @classmethod
    def start(cls, workdir: Path, *, agents: int = 30, lapse_ms: int = 5000, heartbeat_ms: int = 1000,
              drain_s: float = 30.0, log_level: str = "warning", lifetime_s: float = 3600,
              tenant: str = "faults", redis_server: Any = None, env: dict[str, str] | None = None) -> Rig:
        """`redis_server`: a running Redis (a cluster several rigs share, one tenant each), else its own;
        `env`: more settings of every service (CC_* names)."""
        system = WholeSystem.start(workdir, tenant=tenant, edge_id=f"edge-{tenant}",
                                   common_env={**cls.common_env(lapse_ms, log_level), **(env or {})},
                                   edge_env=cls.edge_env(heartbeat_ms, drain_s),
                                   redis_appendonly=True, redis_server=redis_server)
        peers: list[Sipp] = []
        try:
            queue, phones = cls.start_peers(peers, lifetime_s)
            ids = [f"f{n:03d}" for n in range(agents)]
            system.provision(FLOW, None, queue, {a: f"sip:{a}@{phones.uri_host}" for a in ids})
            system.login(*ids)
        except BaseException:
            for p in peers:
                p.stop()
            system.stop()
            raise
        return cls(system=system, workdir=workdir, agents=ids, peers=peers, lapse_ms=lapse_ms, drain_s=drain_s)

    def stop(self) -> None:
        for p in self.peers:
            p.stop()
        self.system.stop()

    # -- one fault ---------------------------------------------------------------------------
    def targets(self) -> list[str]:
        """The SIP addresses the callers call, the load spread evenly over them."""
        return [self.system.caller_target]

    def _callers(self, name: str, calls: int, load: Load, patience_s: float = 0.0) -> list[Sipp]:
        """One SIPp caller per target, `calls` and `load.rate` shared between them; each waits for an
        answer at least `patience_s`."""
        call_timeout_s = max(load.call_timeout_s, patience_s)
        targets = self.targets()
        out = []
        for i, target in enumerate(targets):
            n = calls // len(targets) + (i < calls % len(targets))
            if not n:
                continue
            rate = load.rate / len(targets)
            timeout = n / rate + call_timeout_s + load.talk_ms / 1000 + 60
            suffix = f"-{i + 1}" if len(targets) > 1 else ""
            out.append(Sipp(scenario("caller_logged.xml"), remote=target, service=FLOW, calls=n,
                            rate=rate, timeout_s=timeout,
                            extra=["-d", str(load.talk_ms), "-l", "100000",
                                   "-recv_timeout", str(int(call_timeout_s * 1000)),
                                   "-trace_stat", "-stf", str(self.workdir / f"{name}{suffix}.csv"), "-fd", "1"])
                       .start())
        return out

    def run(self, fault: Fault, load: Load) -> FaultResult:
        """Play the load, inject the fault at its point, wait, measure. Never raises for a loss."""
        started = time.monotonic()
        since = self._now_ms()
        dead_before = int(self.system.redis.xlen(self.system.keys.dead))
        fault.prepare(self)
        first = max(1, min(load.calls - 1, round(load.calls * load.fault_at)))
        self.since_ms, self.struck_after = since, first
        self.deaf_ms = 0
        callers = self._callers(f"{fault.name}-a", first, load, fault.patience_s)
        time.sleep(first / load.rate)
        struck, slack_ms, before = time.monotonic(), 0, self._pids()
        fault.strike(self)
        if fault.load_waits:
            fault.recover(self)
        callers += self._callers(f"{fault.name}-b", load.calls - first, load, fault.patience_s)
        try:
            if not fault.load_waits:
                fault.recover(self)
            slack_ms = int((time.monotonic() - struck) * 2000) + SIP_T1_MS if fault.deaf else 0
            if self.deaf_ms and not fault.deaf:
                slack_ms = 2 * self.deaf_ms + SIP_T1_MS
        finally:
            # the calls end as SIPp plays them even when the recovery failed: a caller stopped
            # mid-call would leave its call up (and its agent busy) for the next fault to count
            for c in callers:
                c.wait()
        self._settle(load.settle_s)
        result = self.measure(fault, callers, since, dead_before, TALK_TOLERANCE_MS + slack_ms)
        result.seconds = time.monotonic() - started
        after = self._pids()
        result.replaced = sorted(n for n in before if before[n] != after.get(n))
        return result

    def arrivals(self) -> int:
        """The calls the edge reported since the running fault started (report.call_arrived)."""
        entries: Any = self.system.redis.xrange(self.system.keys.reports, min=f"{self.since_ms}-0")
        return sum(1 for eid, fields in entries if decode(fields, eid).type == "report.call_arrived")

    def _pids(self) -> dict[str, int | None]:
        """The process id of every service and of redis-server (a fault changes some)."""
        out = {name: svc.proc.pid if svc.proc else None for name, svc in self.system.services.items()}
        proc = getattr(self.system.server, "proc", None)   # one redis-server (not a cluster's nodes)
        out["redis-server"] = proc.pid if proc else None
        return out

    def _now_ms(self) -> int:
        sec, usec = self.system.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    def _quiet(self) -> bool:
        r, k = self.system.redis, self.system.keys
        if r.scard(k.calls):
            return False
        if any(self._pending().values()) or self._unread():
            return False
        return not self._stuck_agents()

    def _unread(self) -> bool:
        """A consumer group has not read its stream to the end yet (a consumer waiting out its
        back-off after a Redis restart has nothing pending, and its CDRs are still to come)."""
        r, k = self.system.redis, self.system.keys
        for stream, group in ((k.reports, "dispatcher"), (k.events, "cdr-writer")):
            last: Any = r.xrevrange(stream, count=1)
            if not last:
                continue
            groups: Any = r.xinfo_groups(stream)
            delivered = next((g["last-delivered-id"] for g in groups if g["name"] == group.encode()), b"0-0")
            if _entry_id(delivered) < _entry_id(last[0][0]):
                return True
        return False

    def _settle(self, settle_s: float) -> None:
        """Wait up to `settle_s` for the system to be quiet. A Redis error (a restarted redis-server
        still loading its AOF, a connection the restart cut) is "not quiet yet", not the end of the
        wait: the services are waiting out their own back-off then, and the measurement below says
        what is left once the time is up."""
        def quiet() -> bool:
            try:
                return self._quiet()
            except redis.RedisError:
                return False
        wait_until(quiet, settle_s, interval=0.5)

    def _pending(self) -> dict[str, int]:
        r, k = self.system.redis, self.system.keys
        out = {}
        for stream, group in ((k.reports, "dispatcher"), (k.events, "cdr-writer")):
            out[group] = int(r.xpending(stream, group)["pending"])
        return out

    def _stuck_agents(self) -> list[str]:
        r, k = self.system.redis, self.system.keys
        states = [r.hget(k.agent(a), "state") for a in self.agents]
        return [a for a, s in zip(self.agents, states, strict=True) if s != b"free"]

    # -- measuring ---------------------------------------------------------------------------
    def measure(self, fault: Fault, callers: list[Sipp], since_ms: int, dead_before: int,
                tolerance_ms: int = TALK_TOLERANCE_MS) -> FaultResult:
        res = FaultResult(fault.name, tolerance_ms=tolerance_ms)
        marks: dict[str, dict[str, int]] = {}   # SIP Call-ID -> {"talk": ms, "bye": ms, "done": ms}
        pids = set()
        for c in callers:
            res.calls += _calls_created(Path(c.extra[c.extra.index("-stf") + 1]))
            assert c.proc is not None
            pids.add(str(c.proc.pid))
            for line in c.scenario_log().splitlines():
                m = re.match(r"(talk|bye|done) (\S+) (\d+)", line.strip())
                if m:
                    marks.setdefault(m.group(2), {})[m.group(1)] = int(m.group(3))
        # the calls the system knew, by SIP Call-ID (SIPp's is <n>-<pid>@<ip>)
        by_sip: dict[str, set[str]] = {}
        r, k = self.system.redis, self.system.keys
        entries: Any = r.xrange(k.reports, min=f"{since_ms}-0")
        for eid, fields in entries:
            e = decode(fields, eid)
            if e.type == "report.call_arrived":
                sip_id = str(e.data["sip_call_id"])
                if sip_id.split("@")[0].rsplit("-", 1)[-1] in pids:
                    # a report delivered twice (retried across an outage) names the same call id
                    by_sip.setdefault(sip_id, set()).add(str(e.data["call_id"]))
        call_ids = [cid for ids in by_sip.values() for cid in ids]
        res.arrived = len(call_ids)
        cdrs, attempts = self._cdrs(call_ids)
        res.cdrs = len(cdrs)
        res.attempt_rows = sum(len(a) for a in attempts.values())
        # a call's attempt rows are 1..n, each `not_connected`, beside its final row
        odd_attempts = [f"{cid}: attempt rows {sorted(n for n, _ in a)} {sorted({o for _, o in a})}"
                        + ("" if cid in cdrs else ", no final row")
                        for cid, a in attempts.items()
                        if sorted(n for n, _ in a) != list(range(1, len(a) + 1))
                        or {o for _, o in a} != {"not_connected"} or cid not in cdrs]
        res.ok = sum(1 for m in marks.values() if "done" in m)
        res.failed = res.calls - res.ok
        unexplained: list[str] = []
        wrong: list[str] = []
        for sip_id, ids in by_sip.items():
            if len(ids) > 1:
                res.duplicates += 1
                wrong.append(f"{sip_id}: {len(ids)} calls")
            mark = marks.get(sip_id, {})
            for cid in ids:
                cdr = cdrs.get(cid)
                if cdr is None:
                    continue
                if cdr["reason"] in fault.explains:
                    if "done" not in mark:
                        res.explained += 1
                        edge = str(cdr["edge"])
                        res.explained_edges[edge] = res.explained_edges.get(edge, 0) + 1
                    continue
                if "done" not in mark:
                    said = next((c.complaint(sip_id) for c in callers if c.complaint(sip_id)), "")
                    unexplained.append(f"{sip_id} ({cid}): SIPp failed, CDR {_brief(cdr)}"
                                       + (f"; SIPp: {said}" if said else ""))
                    continue
                talked = mark["bye"] - mark["talk"]
                res.worst_ms = max(res.worst_ms, abs(int(cdr["talk_ms"]) - talked))
                if (cdr["outcome"], cdr["ended_by"]) != ("answered", "caller") \
                        or abs(int(cdr["talk_ms"]) - talked) > tolerance_ms:
                    res.wrong += 1
                    wrong.append(f"{sip_id} ({cid}): caller talked {talked} ms, CDR {_brief(cdr)}")
        never = res.calls - len(by_sip)
        missing = [cid for cid in call_ids if cid not in cdrs]
        res.stuck_agents = len(self._stuck_agents())
        res.live_calls = int(r.scard(k.calls))
        res.pending = self._pending()
        res.dead = int(r.xlen(k.dead)) - dead_before
        unexplained_n = res.failed - res.explained
        if unexplained_n > 0:
            res.losses.append(f"{unexplained_n} failed calls"
                              + (f" ({never} never reached the system)" if never else ""))
        if missing:
            res.losses.append(f"{len(missing)} calls without CDR")
        if odd_attempts:
            res.losses.append(f"{len(odd_attempts)} calls with inconsistent attempt rows")
        for n, what in ((res.wrong, "wrong CDRs"), (res.duplicates, "SIP calls taken twice"),
                        (res.stuck_agents, "agents not free"), (res.live_calls, "live calls left"),
                        (res.dead, "dead entries")):
            if n:
                res.losses.append(f"{n} {what}")
        if any(res.pending.values()):
            res.losses.append("pending entries: " + ", ".join(f"{g} {n}" for g, n in res.pending.items() if n))
        res.examples = (unexplained + wrong + [f"{cid}: no CDR" for cid in missing] + odd_attempts)[:8]
        return res

    def _cdrs(self, call_ids: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, list[tuple[int, str]]]]:
        """The final row of each call (attempt 0) and its attempt rows (attempt number, outcome)."""
        db = self.workdir / "cc.sqlite3"
        out: dict[str, dict[str, Any]] = {}
        attempts: dict[str, list[tuple[int, str]]] = {}
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            conn.row_factory = sqlite3.Row
            for i in range(0, len(call_ids), 500):
                chunk = call_ids[i:i + 500]
                rows = conn.execute("SELECT call_id, attempt, outcome, ended_by, reason, talk_ms, agent_id, edge "
                                    f"FROM cdrs WHERE call_id IN ({','.join('?' * len(chunk))})", chunk)
                for row in rows:
                    if row["attempt"]:
                        attempts.setdefault(row["call_id"], []).append((row["attempt"], row["outcome"]))
                    else:
                        out[row["call_id"]] = dict(row)
        return out, attempts


def _entry_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


def _brief(cdr: dict[str, Any]) -> str:
    return f"{cdr['outcome']}/{cdr['ended_by']}/{cdr['reason']} talk {cdr['talk_ms']} ms"


def _calls_created(path: Path) -> int:
    """The calls a SIPp caller created: the last line of its -trace_stat file (whether each one
    completed is read from its log file, per Call-ID)."""
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";")) if path.exists() else []
    if len(rows) < 2 or "TotalCallCreated" not in rows[0]:
        return 0
    try:
        return int(rows[-1][rows[0].index("TotalCallCreated")])
    except (ValueError, IndexError):
        return 0
