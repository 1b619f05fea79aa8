"""The issue-15 instrument: complete calls through the whole system, as a new user's stock peers play them.

Every service runs as a process on loopback (redis-server, api, dispatcher, cdr-writer with SQLite,
sip-edge: the `WholeSystem` of the whole-system tests; the services reach redis-server by its Unix
socket, as in scripts/up's demo, or by TCP with --redis tcp) and one SIPp per role, each with
`-buff_size 4194304` (bench/sipp/stock/):
- caller `uac.xml`, in the style of SIPp's built-in uac: INVITE, optional 100/180, 200, ACK; it
  accepts the one re-INVITE that connects it to the agent (200, ACK), talks 2 s, sends BYE;
- welcome media `uas_welcome.xml`: answers, plays 1 s, hangs up; run with -nr, so a retransmission
  it receives is an unexpected message and fails the call instead of being answered quietly;
- queue media `uas_queue.xml`: answers and waits for the BYE;
- one SIPp answers every agent URI `uas_agents.xml`: 180, 200, ACK, the edge's BYE.
In-dialog requests go to [next_url] (the Contact as received); no message is marked optional to hide
a retransmission, and anything unexpected aborts the call. 1,000 agents, wrap-up 0.

Phases:
1. latency (agent BYE -> next INVITE to that agent) at 100 calls/s offered to 200 agents who hang up
   after 2 s, so a queue is always waiting: bench/edge_calls.py's measurement (its own scenarios).
2. rates: before each rate, wait for a quiet machine (1-minute load average under --max-load and no
   other process above 15 % of a core; bounded by --quiet-wait-s; printed); then per rate: answered /
   failed, retransmissions and failures on every SIPp, kernel UDP RcvbufErrors, CPU ms per call per
   service and summed (until every CDR is written), time to agent p50/p99 (the CDR's wait_ms), and
   "clean" = 0 failed calls and 0 retransmissions on every SIPp.
3. memory (last: the calls it leaves would spoil a rate): --mem-calls (2,000) calls up, half waiting
   in a flow with no agent, half with agents: sip-edge RSS per call, and Redis used_memory per
   waiting call (the live calls of the flow with no agent, over those calls).
--profile: py-spy on each service during the --profile-rate step (bench/stock_profile.py).

    .venv/bin/python bench/stock_calls.py --rates 100,150                      # the issue-15 run
    .venv/bin/python bench/stock_calls.py --rates 100 --skip-latency --skip-memory --profile
    .venv/bin/python bench/stock_calls.py --quick --no-wait                    # smoke run, ~2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import edge_calls
from edge_calls import cpu_seconds, rcvbuf_errors, rss_kib, service_pids, socket_drops, stat_args, wait_idle
from stock_profile import Profiling

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem

HERE = Path(__file__).resolve().parent
STOCK = HERE / "sipp" / "stock"
AGENTS, WELCOME_MS, TALK_MS = 1000, 1000, 2000
FLOW, HOLD_FLOW = "bench", "hold"
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------- a quiet machine
def _descendants(root: int) -> set[int]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    mine, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    return mine


def _ticks() -> dict[int, tuple[str, int]]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                head, tail = (d / "stat").read_text().rsplit(")", 1)
                f = tail.split()
                out[int(d.name)] = (head.split("(", 1)[1], int(f[11]) + int(f[12]))
            except (OSError, IndexError, ValueError):
                pass
    return out


def busy_others(sample_s: float = 2.0, share: float = 0.15) -> list[str]:
    """Processes outside this benchmark's tree using more than `share` of a core over `sample_s`."""
    before = _ticks()
    time.sleep(sample_s)
    after = _ticks()
    mine = _descendants(os.getpid())
    busy = []
    for pid, (name, t) in after.items():
        if pid in mine or pid not in before:
            continue
        used = (t - before[pid][1]) / TICKS / sample_s
        if used > share:
            busy.append(f"{name}[{pid}] {used * 100:.0f}%")
    return busy


def wait_quiet(max_load: float, max_wait_s: float, skip: bool) -> str:
    """Wait until the 1-minute load average is under max_load and nobody else is busy; say what happened."""
    t0 = time.monotonic()
    if skip:
        load = os.getloadavg()
        return f"no wait (--no-wait); load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    last_print = 0.0
    while True:
        busy = busy_others()
        load = os.getloadavg()
        waited = time.monotonic() - t0
        if load[0] < max_load and not busy:
            return f"quiet after {waited:.0f} s: load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        if waited >= max_wait_s:
            return (f"NOT QUIET after {waited:.0f} s (the bound): load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
                    f"busy: {', '.join(busy[:6]) or 'none'}")
        if waited - last_print >= 20:
            print(f"   waiting for a quiet machine ({waited:.0f}/{max_wait_s:.0f} s): load {load[0]:.2f}, "
                  f"busy: {', '.join(busy[:4]) or 'none'}", flush=True)
            last_print = waited


# ------------------------------------------------------------------------------- SIPp counters
@dataclass
class Counts:
    """Cumulative counters of one SIPp, from its -trace_stat CSV (last line)."""

    created: int = 0
    success: int = 0
    failed: int = 0
    retrans: int = 0
    unexpected: int = 0
    out_of_call: int = 0  # messages for no known call, or for one that ended (a late retransmission)
    current: int = 0

    @classmethod
    def read(cls, path: Path) -> Counts:
        rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";")) if path.exists() else []
        if len(rows) < 2:
            return cls()
        head, last = rows[0], rows[-1]

        def col(name: str) -> int:
            try:
                return int(last[head.index(name)])
            except (ValueError, IndexError):
                return 0
        return cls(col("TotalCallCreated"), col("SuccessfulCall(C)"), col("FailedCall(C)"),
                   col("Retransmissions(C)"), col("FailedUnexpectedMessage(C)"),
                   col("OutOfCallMsgs(C)") + col("DeadCallMsgs(C)"), col("CurrentCall"))

    def minus(self, o: Counts) -> Counts:
        return Counts(self.created - o.created, self.success - o.success, self.failed - o.failed,
                      self.retrans - o.retrans, self.unexpected - o.unexpected, self.out_of_call - o.out_of_call,
                      self.current)

    def cell(self) -> str:
        late = f" late {self.out_of_call}" if self.out_of_call else ""
        return f"{self.success}/{self.failed}/{self.retrans}{late}"


@dataclass
class Peers:
    """The SIPp peers of the rates: welcome and queue media, and the one SIPp of every agent's phone."""

    workdir: Path
    welcome: Sipp
    queue: Sipp
    agents: Sipp

    def all(self) -> dict[str, Sipp]:
        return {"welcome": self.welcome, "queue": self.queue, "agents": self.agents}

    def counts(self) -> dict[str, Counts]:
        return {name: Counts.read(self.workdir / f"{name}.csv") for name in self.all()}

    def stop(self) -> None:
        for p in self.all().values():
            p.stop()


def start_peers(workdir: Path, total_s: float) -> Peers:
    def peer(name: str, xml: str, extra: list[str]) -> Sipp:
        return Sipp(STOCK / xml, calls=10_000_000, timeout_s=total_s,
                    extra=[*stat_args(workdir, name), "-l", "100000", *extra]).start()
    return Peers(workdir, welcome=peer("welcome", "uas_welcome.xml", ["-nr", "-d", str(WELCOME_MS),
                                                                      "-recv_timeout", "20000"]),
                 queue=peer("queue", "uas_queue.xml", []), agents=peer("agents", "uas_agents.xml", []))


def provision(system: WholeSystem, peers: Peers, flow: str, agents: list[str]) -> None:
    asyncio.run(edge_calls.provision(str(system.api.base_url), system.admin_key, flow, peers.welcome, peers.queue,
                                     peers.agents, agents))


# ------------------------------------------------------------------------------- one rate
@dataclass
class Step:
    """What one rate did: SIPp counters, kernel drops, CPU per service, CDR waits."""

    rate: float
    calls: int
    quiet: str = ""
    caller: Counts = field(default_factory=Counts)
    peers: dict[str, Counts] = field(default_factory=dict)
    rcvbuf: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    drain_s: float = 0.0
    cdrs: int = 0
    waits_ms: list[int] = field(default_factory=list)
    drained: bool = True
    sipp_rc: int = 0

    @property
    def answered(self) -> int:
        return self.caller.success

    @property
    def failed(self) -> int:
        """Calls that did not complete at the caller."""
        return self.calls - self.caller.success

    @property
    def peers_failed(self) -> int:
        """Calls the other SIPps failed (a UAS takes each retransmitted INVITE of a call it had already failed
        for a new call, so under a retransmission storm this can exceed the calls offered)."""
        return sum(c.failed for c in self.peers.values())

    @property
    def retransmissions(self) -> int:
        return self.caller.retrans + sum(c.retrans for c in self.peers.values())

    @property
    def late(self) -> int:
        """Messages a SIPp got for a call it did not know or had ended: retransmissions it could not answer."""
        return self.caller.out_of_call + sum(c.out_of_call for c in self.peers.values())

    @property
    def clean(self) -> bool:
        return (self.failed == 0 and self.peers_failed == 0 and self.retransmissions == 0 and self.late == 0
                and self.drained)

    def ms_per_call(self, name: str) -> float:
        return self.cpu_s.get(name, 0.0) * 1000 / max(self.answered, 1)


def cdr_rows(db: Path, flow: str, after_id: int) -> list[tuple[int, int, int, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        return con.execute("SELECT id, wait_ms, pickup_ms, outcome FROM cdrs WHERE attempt = 0 AND flow_id = ? "
                           "AND id > ? ORDER BY id", (flow, after_id)).fetchall()


def last_cdr_id(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        return int(con.execute("SELECT coalesce(max(id), 0) FROM cdrs").fetchone()[0])


def run_step(system: WholeSystem, peers: Peers, workdir: Path, rate: float, calls: int, *, drain_s: float = 60,
             during: Profiling | None = None, fault: Callable[[Peers], None] | None = None,
             caller_timeout_s: float = 60) -> Step:
    """Offer `calls` at `rate`/s, wait until every call is over and its CDR written, and count."""
    step = Step(rate, calls)
    pids = service_pids(system)
    db = workdir / "cc.sqlite3"
    first_cdr = last_cdr_id(db)
    live_before = system.redis.scard(system.keys.calls)
    ports = {"edge": system.sip_port, **{n: p.port for n, p in peers.all().items()}}
    before_peers, before_rcv, before_drops = peers.counts(), rcvbuf_errors(), socket_drops(ports)
    before_cpu = {n: cpu_seconds(p) for n, p in pids.items()}
    name = f"caller-{rate:g}-{time.monotonic_ns()}"
    t0 = time.monotonic()
    caller = Sipp(STOCK / "uac.xml", remote=system.caller_target, service=FLOW, calls=calls, rate=rate,
                  timeout_s=calls / rate + caller_timeout_s, extra=[*stat_args(workdir, name), "-d", str(TALK_MS),
                                                       "-l", str(calls)]).start()
    if during is not None:
        during.start()
    if fault is not None:
        fault(peers)
    step.sipp_rc = caller.wait()
    offered_s = time.monotonic() - t0
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:  # every call over (no longer live in Redis) and its CDR written
        if (system.redis.scard(system.keys.calls) <= live_before
                and len(cdr_rows(db, FLOW, first_cdr)) >= Counts.read(workdir / f"{name}.csv").created):
            break
        time.sleep(0.1)
    else:
        step.drained = False
    step.elapsed_s = time.monotonic() - t0
    step.drain_s = step.elapsed_s - offered_s
    step.cpu_s = {n: cpu_seconds(p) - before_cpu[n] for n, p in pids.items()}
    step.rcvbuf = rcvbuf_errors() - before_rcv
    step.drops = {k: v - before_drops[k] for k, v in socket_drops(ports).items()}
    # the peers' stat files are written every second; the welcome keeps each call 4 s after its BYE
    wait_until(lambda: all(c.current <= before_peers[k].current for k, c in peers.counts().items()), 12, 0.5)
    time.sleep(1.2)
    step.caller = Counts.read(workdir / f"{name}.csv")
    after_peers = peers.counts()
    step.peers = {k: after_peers[k].minus(before_peers[k]) for k in after_peers}
    rows = cdr_rows(db, FLOW, first_cdr)
    step.cdrs = len(rows)
    step.waits_ms = sorted(r[1] for r in rows if r[3] == "answered")
    return step


def pct(values: list[int], q: float) -> int:
    return values[min(len(values) - 1, max(0, math.ceil(len(values) * q) - 1))] if values else 0


SERVICES = ("sip-edge", "dispatcher", "cdr-writer", "api", "redis-server")


def print_step(s: Step) -> None:
    w, q, a = (s.peers.get(k, Counts()) for k in ("welcome", "queue", "agents"))
    cpu = " ".join(f"{n} {s.ms_per_call(n):.2f}" for n in SERVICES)
    total = sum(s.ms_per_call(n) for n in SERVICES)
    print(f"-- {s.rate:g} calls/s, {s.calls} calls ({s.quiet})")
    print(f"   answered {s.answered}/{s.calls}, failed {s.failed} (at the other SIPps {s.peers_failed}); "
          f"ok/failed/retransmissions: caller "
          f"{s.caller.cell()}, welcome {w.cell()}, queue {q.cell()}, agents {a.cell()}"
          + (f"; unexpected messages {s.caller.unexpected + w.unexpected + q.unexpected + a.unexpected}"))
    print(f"   kernel UDP RcvbufErrors {s.rcvbuf} (socket drops: "
          + ", ".join(f"{k} {v}" for k, v in s.drops.items()) + ")")
    print(f"   CPU ms per answered call: {cpu}; all {total:.2f}  ({sum(s.cpu_s.values()) * 100 / s.elapsed_s:.0f} % "
          f"of one core over {s.elapsed_s:.0f} s, CDR drain {s.drain_s:.1f} s, {s.cdrs} CDRs"
          + ("" if s.drained else ", NOT DRAINED") + ")")
    print(f"   time to agent (CDR wait_ms: received -> agent answered, the 1 s welcome included): "
          f"p50 {pct(s.waits_ms, 0.5)} ms, p99 {pct(s.waits_ms, 0.99)} ms, n {len(s.waits_ms)}")
    print(f"   clean: {'yes' if s.clean else 'NO'} ({s.failed} + {s.peers_failed} failed, {s.retransmissions} "
          f"retransmissions, "
          f"{s.late} late messages)"
          + (f"; caller SIPp rc {s.sipp_rc}" if s.sipp_rc else ""), flush=True)


# ------------------------------------------------------------------------------- memory
def redis_used(system: WholeSystem) -> int:
    return int(system.redis.info("memory")["used_memory"])


def memory_phase(system: WholeSystem, peers: Peers, workdir: Path, n: int, agents: int) -> None:
    """n/2 calls queued in a flow with no agent, then n/2 with agents: edge RSS and Redis memory per call."""
    edge_pid = service_pids(system)["sip-edge"]
    wait_idle(system, 30)
    time.sleep(1)
    rss0, mem0 = rss_kib(edge_pid), redis_used(system)
    live0 = system.redis.scard(system.keys.calls)
    held, connected = n // 2, n - n // 2
    callers = []

    def hold(flow: str, count: int, tag: str) -> None:
        callers.append(Sipp(scenario("caller.xml"), remote=system.caller_target, service=flow, calls=count,
                            rate=100, timeout_s=count / 100 + 180,
                            extra=[*stat_args(workdir, f"mem-{tag}"), "-l", str(count + 10), "-d", "600000"]).start())
    try:
        hold(HOLD_FLOW, held, "held")
        queued = wait_until(lambda: system.redis.zcard(system.keys.queue(HOLD_FLOW)) >= held, held / 100 + 40)
        time.sleep(1)
        waiting = system.redis.zcard(system.keys.queue(HOLD_FLOW))
        live = system.redis.scard(system.keys.calls)
        rss1, mem1 = rss_kib(edge_pid), redis_used(system)
        connected = min(connected, agents)
        hold(FLOW, connected, "connected")
        wait_until(lambda: agents - system.redis.zcard(system.keys.skill_free(FLOW)) >= connected
                   and system.redis.scard(system.keys.calls) >= live + connected, connected / 100 + 40)
        time.sleep(1)
        up = system.redis.scard(system.keys.calls)
        rss2 = rss_kib(edge_pid)
        held_live = live - live0
        print(f"\n== memory: {held_live} calls live in a flow with no agent, {waiting} of them in its queue"
              + ("" if queued else f" (not all {held} queued within the bound: the rest were still before the queue)")
              + f"; then {up} calls up in all ({up - held_live} with agents)")
        print(f"   Redis used_memory {mem0 / 1024:.0f} -> {mem1 / 1024:.0f} KiB: "
              f"{(mem1 - mem0) / max(held_live, 1) / 1024:.2f} KiB per waiting call (its keys, queue entry and the "
              "events it wrote so far; over the live calls of that flow)")
        print(f"   sip-edge RSS {rss0 / 1024:.1f} MiB idle -> {rss1 / 1024:.1f} MiB ({held_live} waiting) -> "
              f"{rss2 / 1024:.1f} MiB ({up} up): {(rss2 - rss0) / max(up, 1):.1f} KiB per concurrent call", flush=True)
    finally:
        for c in callers:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.kill()
            c.wait(10)


def latency_phase(system: WholeSystem, workdir: Path, quick: bool) -> None:
    """bench/edge_calls.py's agent BYE -> next INVITE measurement, offered 100 calls/s."""
    edge_calls.LATENCY_AGENTS, edge_calls.LATENCY_RATE = 200, 100
    edge_calls.LATENCY_CALLS = 300 if quick else 1000
    edge_calls.latency_phase(system, workdir, argparse.Namespace(quick=False))


# ------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,150")
    parser.add_argument("--step-s", type=float, default=20.0)
    parser.add_argument("--agents", type=int, default=AGENTS)
    parser.add_argument("--mem-calls", type=int, default=2000)
    parser.add_argument("--max-load", type=float, default=0.5, help="1-minute load average that counts as quiet")
    parser.add_argument("--quiet-wait-s", type=float, default=300.0, help="bound of the wait for a quiet machine")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (smoke runs)")
    parser.add_argument("--keep-going", action="store_true", help="run every rate even after one that is not clean")
    parser.add_argument("--profile", nargs="?", const="", default=None, metavar="DIR",
                        help="py-spy every service during the --profile-rate step; output into DIR")
    parser.add_argument("--profile-rate", type=float, default=100.0)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--quick", action="store_true", help="rates 20,40 for 8 s, 300 calls for memory")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--redis", choices=("unix", "tcp"), default="unix",
                        help="how the services reach redis-server: its Unix socket (as scripts/up's demo "
                             "does) or its loopback port")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.step_s, args.mem_calls = "20,40", 8.0, 300
    rates = [float(r) for r in str(args.rates).split(",") if r]
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-stock-"))
    env = {"CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "10", "CC_LOG_LEVEL": args.log_level,
           "CC_REJECT_ON_NO_AGENTS": "false"}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the services and peers on `kill`
    print(f"whole system on loopback, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; services to Redis "
          f"by {'its Unix socket' if args.redis == 'unix' else 'TCP'}; work dir {workdir}")
    system = WholeSystem.start(workdir, tenant="bench", edge_id="edge-bench", common_env=env,
                               redis_unix_socket=args.redis == "unix",
                               edge_env={"CC_SIP_INVITE_RATE": "0", "CC_SIP_INVITE_RATE_TOTAL": "0",
                                         "CC_DRAIN_TIMEOUT_S": "1"})
    peers: Peers | None = None
    try:
        if not args.skip_latency:
            latency_phase(system, workdir, args.quick)
        total_s = len(rates) * (args.step_s + args.quiet_wait_s + 120) + 900
        peers = start_peers(workdir, total_s)
        t0 = time.monotonic()
        provision(system, peers, FLOW, [f"a{n:04d}" for n in range(args.agents)])
        provision(system, peers, HOLD_FLOW, [])
        print(f"\nprovisioned {args.agents} agents through the api in {time.monotonic() - t0:.1f} s")
        print(f"\n== rates: stock-style peers, welcome {WELCOME_MS} ms, talk {TALK_MS} ms, {args.agents} agents, "
              f"wrap-up 0, {args.step_s:g} s per rate; CPU of {', '.join(SERVICES)} from /proc/<pid>/stat")
        for rate in rates:
            quiet = wait_quiet(args.max_load, args.quiet_wait_s, args.no_wait)
            prof = None
            if args.profile is not None and rate == args.profile_rate:
                outdir = Path(args.profile) if args.profile else workdir / f"profile-{rate:g}"
                prof = Profiling(outdir, service_pids(system), system.redis, max(int(args.step_s) - 4, 3))
                print(f"   profiling with py-spy into {outdir}", flush=True)
            step = run_step(system, peers, workdir, rate, int(rate * args.step_s), during=prof)
            step.quiet = quiet
            print_step(step)
            if prof is not None:
                print(prof.finish())
                print(f"   profiles (SVG flame graphs, collapsed stacks, summary.txt) in {prof.outdir}", flush=True)
            if not step.clean and not args.keep_going:
                print("   stopping after the first rate that is not clean (--keep-going to run the rest)")
                break
        if not args.skip_memory:  # last: the calls it leaves behind (killed callers) would spoil a rate
            system.restart_edge()  # a fresh edge: it hangs up what the rates left (calls whose peers gave up)
            wait_idle(system, 60)
            print(f"\n(memory phase, {wait_quiet(args.max_load, 0, True)})")
            memory_phase(system, peers, workdir, args.mem_calls, args.agents)
    finally:
        if peers:
            peers.stop()
        system.stop()


def pause_peer(peer: Sipp, seconds: float) -> None:
    """Freeze a SIPp (SIGSTOP) for `seconds`: what it is sent meanwhile waits in its socket, and the sender
    retransmits. Used by the instrument's own test."""
    assert peer.proc is not None
    os.kill(peer.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(peer.proc.pid, signal.SIGCONT)


if __name__ == "__main__":
    sys.exit(main())
