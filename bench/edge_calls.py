"""Whole-system benchmark: complete calls through every service, driven by SIPp.

Runs redis-server, api, dispatcher, cdr-writer and sip-edge as processes on loopback (the same
`WholeSystem` as the whole-system tests) and SIPp as every peer: the callers, the welcome media
server (plays 1 s, then hangs up), the queue media server, and the agents' phones (one SIPp UAS
for all agents; the agent is the Request-URI user). Wrap-up is 0, so agents are reused at once.

A call: INVITE -> welcome media 1 s -> (queue media if no agent is free) -> agent answers at once
-> re-INVITE of the caller to the agent -> 2 s talk -> the caller's BYE.

Phases, each bounded in calls and time:
1. latency: 20 agents (flow `latency`) who hang up after 2 s talk, and 150 callers at 50/s, so a
   queue is always waiting when an agent hangs up. Measured by the agents' SIPp itself: its clock
   when agent X sends BYE -> its clock when the next INVITE to agent X arrives. This is the whole
   path: edge gets the BYE -> report -> dispatcher Lua (frees X, offers it the head of the queue)
   -> command -> edge -> INVITE. p50/p99 over every such pair.
2. throughput: stepped caller rates (each for --step-s seconds); per step, per SIPp side: calls
   completed / failed, retransmissions; the kernel's UDP RcvbufErrors delta; CPU seconds per call
   of sip-edge and of all services (sip-edge, dispatcher, cdr-writer, api, redis-server) from
   /proc/<pid>/stat; the maximum rate with zero failed calls. Stops after the first failing step.
3. memory (run before the rates, on an edge warmed by the latency phase, which is then restarted):
   --mem-calls calls with a long talk, ramped at 100/s; the sip-edge's RSS (VmRSS) with them all
   up minus its RSS before, per call.

    .venv/bin/python bench/edge_calls.py                 # ~6 minutes
    .venv/bin/python bench/edge_calls.py --quick         # ~1.5 minutes, small numbers
    .venv/bin/python bench/edge_calls.py --rates 100,150 --step-s 20 --skip-latency --skip-memory

Services log at CC_LOG_LEVEL=warning (--log-level) and the per-source INVITE rate limit is off
(every call comes from one SIPp address).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from wire_clock import WireClock

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
LATENCY_AGENTS, LATENCY_CALLS, LATENCY_RATE = 20, 150, 50
TALK_MS, WELCOME_MS = 2000, 1000


def bench_scenario(name: str) -> Path:
    return HERE / "sipp" / name


# ------------------------------------------------------------------------------- measurements
def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rcvbuf_errors() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def socket_drops(ports: dict[str, int]) -> dict[str, int]:
    """Datagrams dropped by each named local UDP port's socket (the `drops` column of /proc/net/udp)."""
    out = {name: 0 for name in ports}
    by_port = {f":{port:04X}": name for name, port in ports.items()}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        name = by_port.get(fields[1][fields[1].index(":"):])
        if name is not None:
            out[name] += int(fields[-1])
    return out


@dataclass
class SippStats:
    """Cumulative counters of one SIPp process, from its -trace_stat CSV (last line)."""

    success: int = 0
    failed: int = 0
    retrans: int = 0
    created: int = 0

    @classmethod
    def read(cls, path: Path) -> SippStats:
        if not path.exists():
            return cls()
        rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
        if len(rows) < 2:
            return cls()
        head, last = rows[0], rows[-1]

        def col(name: str) -> int:
            try:
                return int(last[head.index(name)])
            except (ValueError, IndexError):
                return 0
        return cls(success=col("SuccessfulCall(C)"), failed=col("FailedCall(C)"),
                   retrans=col("Retransmissions(C)"), created=col("TotalCallCreated"))

    def minus(self, other: SippStats) -> SippStats:
        return SippStats(self.success - other.success, self.failed - other.failed, self.retrans - other.retrans,
                         self.created - other.created)


def stat_args(sipp_dir: Path, name: str) -> list[str]:
    return ["-trace_stat", "-stf", str(sipp_dir / f"{name}.csv"), "-fd", "1"]


@dataclass
class Peers:
    """The SIPp processes that play the callers' peers: welcome and queue media, and every agent's phone."""

    workdir: Path
    welcome: Sipp
    queue: Sipp
    phones: Sipp
    started: list[Sipp] = field(default_factory=list)

    def stats(self) -> dict[str, SippStats]:
        return {name: SippStats.read(self.workdir / f"{name}.csv") for name in ("welcome", "queue", "agents")}


def start_peer(workdir: Path, name: str, scen: Path, extra: list[str], timeout_s: float) -> Sipp:
    return Sipp(scen, calls=10_000_000, timeout_s=timeout_s,
                extra=[*stat_args(workdir, name), "-l", "100000", *extra]).start()


# ------------------------------------------------------------------------------- provisioning
async def provision(api_url: str, key: str, flow: str, welcome: Sipp, queue: Sipp, phones: Sipp,
                    agent_ids: list[str]) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as api:
        body = {"skill": flow, "priority": 0, "welcome_uri": f"sip:welcome@{welcome.uri_host}",
                "queue_uri": f"sip:queue@{queue.uri_host}"}
        r = await api.put(f"/v1/flows/{flow}", json=body)
        assert r.status_code in (200, 201), r.text
        slots = asyncio.Semaphore(16)

        async def one(agent_id: str) -> None:
            async with slots:
                r = await api.put(f"/v1/agents/{agent_id}",
                                  json={"uri": f"sip:{agent_id}@{phones.uri_host}", "skills": [flow]})
                assert r.status_code in (200, 201), r.text
                r = await api.post(f"/v1/agents/{agent_id}/login")
                assert r.status_code == 200, r.text
        await asyncio.gather(*(one(a) for a in agent_ids))


def wait_idle(system: WholeSystem, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if system.redis.scard(system.keys.calls) == 0:
            return True
        time.sleep(0.2)
    return False


def service_pids(system: WholeSystem) -> dict[str, int]:
    pids = {name: svc.proc.pid for name, svc in system.services.items() if svc.proc is not None}
    proc = getattr(system.server, "proc", None)
    if proc is not None:
        pids["redis-server"] = proc.pid
    for node in getattr(system.server, "data", []):   # Sentinel's master and replica
        if node.proc is not None:
            pids[f"redis-{node.port}"] = node.proc.pid
    return pids


def schedstat(pid: int) -> tuple[float, float, int]:
    """(s on a CPU, s runnable but waiting for one, times run) summed over the process's threads
    (/proc/<pid>/task/*/schedstat: the kernel's run-queue accounting)."""
    on = wait = runs = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            a, b, c = (int(x) for x in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue   # a thread gone meanwhile
        on, wait, runs = on + a, wait + b, runs + c
    return on / 1e9, wait / 1e9, runs


def bye_to_invite_gaps(scenario_log: str) -> dict[str, list[int]]:
    """Per agent, in order, ms from its BYE to the next INVITE to it, from the log lines of
    agent_hangs_up.xml ("bye <agent> <ms>", "invite <agent> <ms>": SIPp's clock)."""
    gaps: dict[str, list[int]] = {}
    last_bye: dict[str, int] = {}
    for line in scenario_log.splitlines():
        m = re.search(r"\b(invite|bye) (\S+) (\d+)", line)
        if not m:
            continue
        kind, agent, tick = m.group(1), m.group(2), int(m.group(3))
        if kind == "bye":
            last_bye[agent] = tick
        elif agent in last_bye:
            gaps.setdefault(agent, []).append(tick - last_bye.pop(agent))
    return gaps


# ------------------------------------------------------------------------------- phases
def edge_call_ends(system: WholeSystem) -> dict[str, float]:
    """The sip-edge's counts of the call ends it applied itself (by result) and left to the
    dispatchers (CC_APPLY_CALL_ENDS, CC_APPLY_CALL_ENDS_MAX_CPU), from its /metrics."""
    url = system.services["sip-edge"].health_url.rsplit("/", 1)[0] + "/metrics"
    counts: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        m = re.match(r'callcenter_edge_(?:steps_applied_total\{rc="(\w+)"\}|(call_ends_left)_total) (\S+)$', line)
        if m:
            counts[m[1] or "left"] = float(m[3])
    return counts


def latency_phase(system: WholeSystem, workdir: Path, args: argparse.Namespace) -> None:
    calls = LATENCY_CALLS if not args.quick else 60
    welcome = start_peer(workdir, "lat-welcome", scenario("media_welcome.xml"), ["-d", str(WELCOME_MS)], 120)
    queue = start_peer(workdir, "lat-queue", scenario("media_queue.xml"), [], 120)
    phones = start_peer(workdir, "lat-agents", bench_scenario("agent_hangs_up.xml"), ["-d", str(TALK_MS)], 120)
    no_wire = WireClock.available()
    wire = WireClock(phones.port) if no_wire is None else None
    ends_before = edge_call_ends(system)
    edge_pid = service_pids(system)["sip-edge"]
    sched_before = schedstat(edge_pid)
    try:
        agents = [f"lat{n:03d}" for n in range(LATENCY_AGENTS)]
        asyncio.run(provision(str(system.api.base_url), system.admin_key, "latency", welcome, queue, phones, agents))
        if wire is not None:
            wire.start()
        caller = Sipp(scenario("caller_waits_for_bye.xml"), remote=system.caller_target, service="latency",
                      calls=calls, rate=LATENCY_RATE, timeout_s=90,
                      extra=[*stat_args(workdir, "lat-caller"), "-l", "5000"]).start()
        rc = caller.wait()
        wait_idle(system, 20)
        time.sleep(1.5)  # the last log lines of the phones
    finally:
        if wire is not None:
            wire.stop()
        for p in (welcome, queue, phones):
            p.stop()
    caller_stats = SippStats.read(workdir / "lat-caller.csv")
    gaps = [gap for agent_gaps in bye_to_invite_gaps(phones.scenario_log()).values() for gap in agent_gaps]
    print(f"\n== agent BYE -> next queued call's INVITE to that agent ({LATENCY_AGENTS} agents hanging up after "
          f"{TALK_MS} ms, {calls} callers at {LATENCY_RATE}/s, wrap-up 0)")
    print(f"   callers: {caller_stats.success} completed, {caller_stats.failed} failed (SIPp rc {rc})")
    on, wait, runs = (a - b for a, b in zip(schedstat(edge_pid), sched_before, strict=True))
    print(f"   sip-edge: {on:.2f} s on a CPU, {wait:.2f} s runnable waiting for one, {runs} runs: "
          f"{1e6 * wait / max(runs, 1):.0f} µs waited per run on average (/proc/<pid>/task/*/schedstat)")
    ends = {k: v - ends_before.get(k, 0) for k, v in edge_call_ends(system).items()}
    print("   call ends the edge applied itself: "
          + (", ".join(f"{k} {v:.0f}" for k, v in sorted(ends.items()) if k != "left") or "none")
          + f"; left to the dispatchers (its process over CC_APPLY_CALL_ENDS_MAX_CPU): {ends.get('left', 0):.0f}")
    if gaps:
        print(f"   {len(gaps)} pairs: p50 {statistics.median(gaps):.0f} ms, p99 {pct(gaps, 0.99)} ms, "
              f"max {max(gaps)} ms "
              "(the agents' SIPp clock: BYE sent -> INVITE received; it moves in 4 ms steps here)")
    else:
        print("   no BYE -> INVITE pairs measured")
    if wire is None:
        print(f"   on the wire: not measured ({no_wire})")
        return
    on_wire = [g for agent_gaps in wire.bye_to_invite_ms().values() for g in agent_gaps]
    if on_wire:
        print(f"   on the wire: {len(on_wire)} pairs: p50 {pct(on_wire, 0.5):.2f} ms, "
              f"p99 {pct(on_wire, 0.99):.2f} ms, max {max(on_wire):.2f} ms "
              "(bench/wire_clock.py: the kernel's stamps of the BYE and the INVITE on lo)")
    else:
        print("   on the wire: no BYE -> INVITE pairs seen")


def pct(values: Sequence[float], p: float) -> float:
    """The `p` quantile of `values` (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(len(s) * p) - 1))]


def throughput_phase(system: WholeSystem, peers: Peers, workdir: Path, args: argparse.Namespace) -> None:
    pids = service_pids(system)
    print(f"\n== complete calls: welcome {WELCOME_MS} ms -> agent answers at once -> {TALK_MS} ms talk -> caller "
          f"BYE; {args.agents} agents, wrap-up 0, {args.step_s} s per rate")
    head = (f"{'rate/s':>6} {'calls':>6} {'ok':>6} {'fail':>5} {'retr':>5} | {'welcome ok/fail/retr':>20} "
            f"{'queue ok/fail':>13} {'agents ok/fail/retr':>19} | {'rcvbuf':>6} | {'edge ms/call':>12} "
            f"{'all ms/call':>11} {'edge cpu%':>9} {'all cpu%':>8}")
    print(head)
    best = clean = 0
    for rate in args.rates:
        calls = int(rate * args.step_s)
        before_peers = peers.stats()
        before_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        before_rcv = rcvbuf_errors()
        ports = {"edge": system.sip_port, "welcome": peers.welcome.port, "queue": peers.queue.port,
                 "agents": peers.phones.port}
        before_drops = socket_drops(ports)
        started = time.monotonic()
        name = f"caller-{rate}"
        caller = Sipp(scenario("caller.xml"), remote=system.caller_target, service="bench", calls=calls, rate=rate,
                      timeout_s=args.step_s + 60, extra=[*stat_args(workdir, name), "-l", "20000",
                                                         "-d", str(TALK_MS)]).start()
        rc = caller.wait()
        idle = wait_idle(system, 30)
        time.sleep(1.2)  # the UAS stat files are written every second
        elapsed = time.monotonic() - started
        cs = SippStats.read(workdir / f"{name}.csv")
        after_peers = peers.stats()
        d = {k: after_peers[k].minus(before_peers[k]) for k in after_peers}
        cpu = {name: cpu_seconds(pid) - before_cpu[name] for name, pid in pids.items()}
        rcv = rcvbuf_errors() - before_rcv
        drops = {k: v - before_drops[k] for k, v in socket_drops(ports).items()}
        done = max(cs.success, 1)
        edge_ms = cpu["sip-edge"] * 1000 / done
        all_ms = sum(cpu.values()) * 1000 / done
        w, q, a = d["welcome"], d["queue"], d["agents"]
        failures = cs.failed + w.failed + q.failed + a.failed + (calls - cs.success)
        print(f"{rate:>6} {calls:>6} {cs.success:>6} {cs.failed:>5} {cs.retrans:>5} | "
              f"{f'{w.success}/{w.failed}/{w.retrans}':>20} {f'{q.success}/{q.failed}':>13} "
              f"{f'{a.success}/{a.failed}/{a.retrans}':>19} | {rcv:>6} | {edge_ms:>12.2f} {all_ms:>11.2f} "
              f"{cpu['sip-edge'] * 100 / elapsed:>9.0f} {sum(cpu.values()) * 100 / elapsed:>8.0f}"
              + ("" if idle else "  (calls left in Redis)") + (f"  sipp rc {rc}" if rc else ""))
        print(f"{'':>6} CPU ms/call: " + ", ".join(f"{k} {v * 1000 / done:.2f}" for k, v in cpu.items()))
        if rcv:
            print(f"{'':>6} socket drops: " + ", ".join(f"{k} {v}" for k, v in drops.items()) + ", caller's not known")
        sys.stdout.flush()
        retrans = cs.retrans + w.retrans + a.retrans
        if failures == 0 and idle:
            best = rate
            if retrans <= calls * 0.01:
                clean = rate
        elif not args.keep_going:
            print(f"   stopping: {failures} failed or missing calls at {rate}/s; SIPp errors:\n"
                  f"{caller.errors()[-1500:]}")
            break
    cpu_parts = ", ".join(pids)
    print(f"   max rate with zero failed calls: {best} calls/s; with zero failed calls and retransmissions under "
          f"1% of calls: {clean} calls/s")
    print(f"   (CPU of: {cpu_parts}; % of one core over the step including its drain; retr = SIPp retransmissions)")


def memory_phase(system: WholeSystem, peers: Peers, workdir: Path, args: argparse.Namespace) -> None:
    edge_pid = service_pids(system)["sip-edge"]
    wait_idle(system, 30)
    time.sleep(1)
    base = rss_kib(edge_pid)
    n = args.mem_calls
    rate = 100
    caller = Sipp(scenario("caller.xml"), remote=system.caller_target, service="bench", calls=n, rate=rate,
                  timeout_s=n / rate + 120, extra=[*stat_args(workdir, "caller-mem"), "-l", str(n + 10),
                                                   "-d", "120000"]).start()
    try:
        deadline = time.monotonic() + n / rate + 40
        while time.monotonic() < deadline:
            live = system.redis.scard(system.keys.calls)
            free = system.redis.zcard(system.keys.skill_free("bench"))
            if live >= n and args.agents - free >= n:  # every call is with an agent
                break
            time.sleep(0.5)
        time.sleep(1)
        up = system.redis.scard(system.keys.calls)
        rss = rss_kib(edge_pid)
        print(f"\n== memory: {up} calls up (connected to agents, ramped at {rate}/s)")
        print(f"   sip-edge RSS {base / 1024:.1f} MiB idle -> {rss / 1024:.1f} MiB; "
              f"{(rss - base) / max(up, 1):.1f} KiB per concurrent call")
    finally:
        if caller.proc is not None and caller.proc.poll() is None:
            caller.proc.kill()  # the calls stay up; stopping the system hangs them up
        caller.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="25,50,100,150,200")
    parser.add_argument("--step-s", type=float, default=20.0)
    parser.add_argument("--agents", type=int, default=0, help="default: enough for the highest rate and --mem-calls")
    parser.add_argument("--mem-calls", type=int, default=2000)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--keep-going", action="store_true", help="run every rate even after a failing one")
    parser.add_argument("--quick", action="store_true", help="rates 25,50 for 8 s, 300 calls for memory")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--redis", choices=("single", "sentinel"), default="single",
                        help="one redis-server, or a master + replica behind Sentinel")
    parser.add_argument("--wait-replicas", type=int, default=0, help="CC_REDIS_WAIT_REPLICAS of every service")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.step_s, args.mem_calls = "25,50", 8.0, 300
    args.rates = [int(r) for r in str(args.rates).split(",") if r]
    need = max(max(args.rates) * (TALK_MS + 500) // 1000 + 50, 0 if args.skip_memory else args.mem_calls + 50)
    args.agents = args.agents or need

    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-edge-"))
    env = {"CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "10", "CC_LOG_LEVEL": args.log_level,
           "CC_REJECT_ON_NO_AGENTS": "false", "CC_REDIS_WAIT_REPLICAS": str(args.wait_replicas)}
    print(f"whole system on loopback, {os.cpu_count()} cores, Redis {args.redis}, "
          f"CC_REDIS_WAIT_REPLICAS={args.wait_replicas}; work dir {workdir}")
    system = WholeSystem.start(workdir, tenant="bench", edge_id="edge-bench", common_env=env,
                               redis_topology=args.redis,
                               edge_env={"CC_SIP_INVITE_RATE": "0", "CC_SIP_INVITE_RATE_TOTAL": "0",
                                         "CC_DRAIN_TIMEOUT_S": "1"})
    peers: Peers | None = None
    try:
        if not args.skip_latency:
            latency_phase(system, workdir, args)
        if args.skip_throughput and args.skip_memory:
            return
        total_s = len(args.rates) * (args.step_s + 90) + args.mem_calls / 100 + 300
        peers = Peers(workdir,
                      welcome=start_peer(workdir, "welcome", scenario("media_welcome.xml"), ["-d", str(WELCOME_MS)],
                                         total_s),
                      queue=start_peer(workdir, "queue", scenario("media_queue.xml"), [], total_s),
                      phones=start_peer(workdir, "agents", bench_scenario("agent_answers.xml"), [], total_s))
        t0 = time.monotonic()
        asyncio.run(provision(str(system.api.base_url), system.admin_key, "bench", peers.welcome, peers.queue,
                              peers.phones, [f"b{n:05d}" for n in range(args.agents)]))
        print(f"\nprovisioned {args.agents} agents through the api in {time.monotonic() - t0:.1f} s")
        if not args.skip_memory:
            memory_phase(system, peers, workdir, args)
            system.restart_edge()  # drains 1 s, hangs the calls up; a fresh edge for the rates
            wait_idle(system, 60)
        if not args.skip_throughput:
            throughput_phase(system, peers, workdir, args)
    finally:
        if peers:
            for p in (peers.welcome, peers.queue, peers.phones):
                p.stop()
        system.stop()


if __name__ == "__main__":
    main()
