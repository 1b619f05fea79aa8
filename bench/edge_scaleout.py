"""Scale-out of the sip-edge (issue 13, acceptance 7, the edge half): calls/s with 1 edge and with 2
edges, in one run, printed as a ratio.

One whole system on loopback (callcenter_dev.replicas: 2 sip-edges, 1 dispatcher, 1 cdr-writer,
1 api, redis-server, SQLite), its peers driven as users' peers do, with the stock-style SIPp
scenarios of bench/edge_calls.py: a caller (caller.xml) -> welcome media 1 s (media_welcome.xml)
-> an agent's phone that answers at once (bench/sipp/agent_answers.xml) -> 2 s talk -> the
caller's BYE. Wrap-up 0; enough agents for the highest rate.

Stepped rates (each for --step-s seconds), each played first through 1 edge (one SIPp caller at
edge 1), then through 2 (one SIPp caller per edge at half the rate each), so that both see the
machine as it is at that time; each side stops at its first step with a failed call. Per step: calls
completed / failed, retransmissions (callers, media, phones), CPU of each edge and of every process
(services, redis-server and the SIPp peers) from /proc. A side's result is its highest rate with no
failed call (and its calls drained: no more live calls than before it); the ratio is 2 edges / 1
edge. Then per-core figures (calls/s per edge core from its CPU per call) and the arithmetic for 16
cores.

    .venv/bin/python bench/edge_scaleout.py                   # rates 50..250 by 25, 15 s each: ~8 minutes
    .venv/bin/python bench/edge_scaleout.py --quick           # 2 rates, 8 s each: ~1.5 minutes

Every process shares the machine's cores: on 2 cores the edges, the other services, redis-server
and the SIPp peers compete, so the ratio says what a second edge adds on this machine, not what a
second core for it would (bench/README.md, "Edge scale-out").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge_calls import (
    TALK_MS,
    WELCOME_MS,
    Peers,
    SippStats,
    bench_scenario,
    cpu_seconds,
    provision,
    start_peer,
    stat_args,
    wait_idle,
)

from callcenter_dev.replicas import Counts, Replicas
from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until


@dataclass
class Step:
    """One rate played through `edges` edges, and what it cost."""

    edges: int
    rate: int
    calls: int
    ok: int
    failed: int
    retrans: int
    edge_cpu_s: list[float]   # per edge used
    svc_cpu_s: float           # the other services and redis-server
    sipp_cpu_s: float          # every SIPp: callers, media, phones
    seconds: float
    idle: bool

    @property
    def clean(self) -> bool:
        return self.failed == 0 and self.ok == self.calls and self.idle

    @property
    def edge_ms_per_call(self) -> float:
        return sum(self.edge_cpu_s) * 1000 / max(self.ok, 1)

    @property
    def svc_ms_per_call(self) -> float:
        return self.svc_cpu_s * 1000 / max(self.ok, 1)

    @property
    def all_cpu_s(self) -> float:
        return sum(self.edge_cpu_s) + self.svc_cpu_s + self.sipp_cpu_s


def pids(replicas: Replicas, peers: Peers) -> dict[str, int]:
    out = {name: pid for name, pid in replicas.pids().items() if pid is not None}
    if replicas.system.server.proc is not None:
        out["redis-server"] = replicas.system.server.proc.pid
    for name, p in (("welcome", peers.welcome), ("queue", peers.queue), ("phones", peers.phones)):
        if p.proc is not None:
            out[name] = p.proc.pid
    return out


def run_step(replicas: Replicas, peers: Peers, workdir: Path, edges: int, rate: int, step_s: float) -> Step:
    procs = pids(replicas, peers)
    system = replicas.system
    live_before = int(system.redis.scard(system.keys.calls))   # a failed step's calls may linger
    before_peers = peers.stats()
    before_cpu = {n: cpu_seconds(p) for n, p in procs.items()}
    started = time.monotonic()
    callers = []
    for i, target in enumerate(replicas.targets[:edges]):
        n = int(rate * step_s) // edges
        callers.append(Sipp(scenario("caller.xml"), remote=target, service="bench", calls=n, rate=rate / edges,
                            timeout_s=step_s + 60,
                            extra=[*stat_args(workdir, f"caller-{edges}-{rate}-{i}"), "-l", "20000",
                                   "-d", str(TALK_MS)]).start())
    caller_cpu = [0.0] * len(callers)
    while any(c.running() for c in callers):   # the callers' own CPU, read while they live
        for i, c in enumerate(callers):
            if c.proc is not None:
                caller_cpu[i] = cpu_seconds(c.proc.pid) or caller_cpu[i]
        time.sleep(0.2)
    for c in callers:
        c.wait()
    idle = wait_until(lambda: int(system.redis.scard(system.keys.calls)) <= live_before, 45, interval=0.2)
    time.sleep(1.2)   # the UAS stat files are written every second
    elapsed = time.monotonic() - started
    stats = [SippStats.read(workdir / f"caller-{edges}-{rate}-{i}.csv") for i in range(len(callers))]
    after_peers = peers.stats()
    d = {k: after_peers[k].minus(before_peers[k]) for k in after_peers}
    cpu = {n: cpu_seconds(p) - before_cpu[n] for n, p in procs.items()}
    calls = sum(int(rate * step_s) // edges for _ in callers)
    ok = sum(s.success for s in stats)
    failed = sum(s.failed for s in stats) + sum(x.failed for x in d.values())
    retrans = sum(s.retrans for s in stats) + sum(x.retrans for x in d.values())
    peers_cpu = sum(cpu.pop(n) for n in ("welcome", "queue", "phones"))
    edge_cpu = [cpu.pop(e) for e in replicas.edges]
    return Step(edges, rate, calls, ok, failed, retrans, edge_cpu[:edges], sum(cpu.values()) + sum(edge_cpu[edges:]),
                peers_cpu + sum(caller_cpu), elapsed, idle)


def print_step(s: Step) -> None:
    edge_cpu = "/".join(f"{c * 100 / s.seconds:.0f}" for c in s.edge_cpu_s)
    print(f"{s.edges:>5} {s.rate:>6} {s.calls:>6} {s.ok:>6} {s.failed:>5} {s.retrans:>6} | "
          f"{s.edge_ms_per_call:>12.2f} {s.svc_ms_per_call:>11.2f} {s.sipp_cpu_s * 1000 / max(s.ok, 1):>11.2f} "
          f"{edge_cpu:>11} {s.all_cpu_s * 100 / s.seconds:>8.0f}"
          + ("" if s.idle else "  (calls left in Redis)"), flush=True)


def interleaved(replicas: Replicas, peers: Peers, workdir: Path, rates: list[int],
                step_s: float) -> dict[int, list[Step]]:
    """Each rate with 1 edge, then with 2 (so both see the same machine at about the same time); a
    side stops at its first failing step. Before each step the calls of the last one have drained
    (a failed step can leave some until their timers end them)."""
    out: dict[int, list[Step]] = {1: [], 2: []}
    for rate in rates:
        for edges in (1, 2):
            if out[edges] and not out[edges][-1].clean:
                continue
            wait_idle(replicas.system, 90)
            time.sleep(2)
            step = run_step(replicas, peers, workdir, edges, rate, step_s)
            print_step(step)
            out[edges].append(step)
        if not out[1][-1].clean and not out[2][-1].clean:
            break
    return out


def best(steps: list[Step]) -> Step | None:
    clean = [s for s in steps if s.clean]
    return clean[-1] if clean else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="50,75,100,125,150,175,200,225,250")
    parser.add_argument("--step-s", type=float, default=15.0)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--quick", action="store_true", help="rates 25,50 for 8 s")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.step_s = "25,50", 8.0
    rates = [int(r) for r in str(args.rates).split(",") if r]
    agents = max(rates) * (TALK_MS + 500) // 1000 + 50

    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-scaleout-"))
    cores = os.cpu_count() or 1
    print(f"whole system on loopback, {cores} cores, load average {os.getloadavg()[0]:.1f}; work dir {workdir}")
    env = {"CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "10", "CC_LOG_LEVEL": args.log_level,
           "CC_REJECT_ON_NO_AGENTS": "false"}
    replicas = Replicas.start(workdir, Counts(edges=2, dispatchers=1, cdr_writers=1, apis=1, workers=0),
                              tenant="bench", edge_id="edge-bench", common_env=env,
                              edge_env={"CC_SIP_INVITE_RATE": "0", "CC_SIP_INVITE_RATE_TOTAL": "0",
                                        "CC_DRAIN_TIMEOUT_S": "1"})
    peers: Peers | None = None
    results: dict[int, list[Step]] = {1: [], 2: []}
    try:
        total_s = 2 * len(rates) * (args.step_s + 90) + 300
        peers = Peers(workdir,
                      welcome=start_peer(workdir, "welcome", scenario("media_welcome.xml"), ["-d", str(WELCOME_MS)],
                                         total_s),
                      queue=start_peer(workdir, "queue", scenario("media_queue.xml"), [], total_s),
                      phones=start_peer(workdir, "agents", bench_scenario("agent_answers.xml"), [], total_s))
        system = replicas.system
        asyncio.run(provision(str(system.api.base_url), system.admin_key, "bench", peers.welcome, peers.queue,
                              peers.phones, [f"b{n:05d}" for n in range(agents)]))
        print(f"{agents} agents; welcome {WELCOME_MS} ms -> agent answers at once -> {TALK_MS} ms talk -> caller "
              f"BYE; {args.step_s:g} s per rate; each side stops at its first step with a failed call")
        print(f"{'edges':>5} {'rate/s':>6} {'calls':>6} {'ok':>6} {'fail':>5} {'retr':>6} | {'edge ms/call':>12} "
              f"{'svc ms/call':>11} {'sipp ms/call':>11} {'edge cpu%':>11} {'all cpu%':>8}")
        results = interleaved(replicas, peers, workdir, rates, args.step_s)
    finally:
        if peers:
            for p in (peers.welcome, peers.queue, peers.phones):
                p.stop()
        replicas.stop()

    one, two = best(results.get(1, [])), best(results.get(2, []))
    print(f"\nmax calls/s with no failed call: 1 edge {one.rate if one else 0}, 2 edges {two.rate if two else 0}"
          + (f"; ratio 2/1 = {two.rate / one.rate:.2f}" if one and two else ""))
    if one and two:
        for s in (one, two):
            print(f"   {s.edges} edge(s) at {s.rate}/s: edges {s.edge_ms_per_call:.2f} ms CPU per call "
                  f"({1000 / s.edge_ms_per_call:.0f} calls/s per edge core), other services and redis "
                  f"{s.svc_ms_per_call:.2f} ms, SIPp peers {s.sipp_cpu_s * 1000 / s.ok:.2f} ms; "
                  f"{s.all_cpu_s * 100 / s.seconds:.0f} % of {cores * 100} % used")
        # per-call figures from the highest rate both sides carried (a side past its limit, or
        # after the other side's failed step, pays for retransmissions and lingering calls)
        both = [s for s in results[2] if s.clean and s.rate <= one.rate]
        ref = both[-1] if both else two
        edge_ms, svc_ms = ref.edge_ms_per_call, ref.svc_ms_per_call
        per_call = edge_ms + svc_ms
        print(f"   16 cores on paper (the peers elsewhere, as in production), from 2 edges at {ref.rate}/s: "
              f"{edge_ms:.2f} + {svc_ms:.2f} ms per call -> 16 * 1000 / {per_call:.2f} = {16000 / per_call:.0f} "
              f"calls/s, with "
              f"{16 * edge_ms / per_call:.1f} cores of edges ({16 * edge_ms / per_call:.0f} edges, one core each) "
              f"and {16 * svc_ms / per_call:.1f} for the rest")
    return 0 if one and two else 1


if __name__ == "__main__":
    sys.exit(main())
