"""What the whole system costs with nothing to do (issue 15: per-call CPU that falls with the rate).

Starts the whole system on loopback (`WholeSystem` with the stock SIPp peers and `--agents` agents
logged in, as bench/stock_calls.py does), waits `--settle-s`, then for `--seconds` with no call:
- each process's CPU per second (/proc/<pid>/stat utime+stime) and its voluntary context switches
  (wake-ups) per second: sip-edge, dispatcher, cdr-writer, api, redis-server;
- every Redis command per second by the process that sent it (a MONITOR connection copies them to a
  file; each service's TCP client ports are sampled from /proc meanwhile, so a command is
  attributed by its client address; a script's inner commands show as `lua`, counted apart);
- redis-server's own periodic work (`hz`, active expiry) is not a command: its share is the CPU
  left once the commands' time (INFO commandstats, µs) is taken out.

A fixed cost per second divided by the calls of that second is what makes a call cost more at 100
calls/s than at 250/s; this prints that cost.

    .venv/bin/python bench/idle_costs.py                 # 20 s idle, 1,000 agents
    .venv/bin/python bench/idle_costs.py --seconds 30 --env CC_TIMER_INTERVAL_MS=100
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from edge_redis_commands import Monitor, edge_ports
from stock_calls import FLOW, HOLD_FLOW, TICKS, provision, start_peers

from callcenter_dev.system import WholeSystem

_LINE = re.compile(rb'^\+?(\d+\.\d+) \[\d+ ([^\]]+)\] "([^"]*)"')


def cpu_and_wakeups(pid: int) -> tuple[float, int]:
    """(CPU seconds, voluntary context switches) of `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = Path(f"/proc/{pid}/status").read_text()
    vol = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
    wakeups = int(vol.group(1)) if vol else 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        if tid == str(pid):
            continue
        try:
            tstatus = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        tvol = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", tstatus, re.MULTILINE)
        wakeups += int(tvol.group(1)) if tvol else 0
    return (int(fields[11]) + int(fields[12])) / TICKS, wakeups


class ServiceMonitor(Monitor):
    """The MONITOR copy, with every service's client ports sampled (not only the edge's)."""

    def __init__(self, host: str, port: int, out: Path, pids: dict[str, int]) -> None:
        self.pids = pids
        self.ports_of: dict[str, set[int]] = {name: set() for name in pids}
        super().__init__(host, port, out, 0)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.ports_of[name] |= edge_ports(pid)
            time.sleep(0.2)


def tally(path: Path, ports_of: dict[str, set[int]], start: float, end: float) -> Counter[tuple[str, str]]:
    """Commands by (source, name) between `start` and `end`; `lua` for a script's own commands."""
    source = {f"127.0.0.1:{p}".encode(): name for name, ports in ports_of.items() for p in ports}
    count: Counter[tuple[str, str]] = Counter()
    with path.open("rb") as f:
        for raw in f:
            m = _LINE.match(raw.rstrip(b"\r\n"))
            if m is None:
                continue
            ts = float(m.group(1))
            if not start <= ts < end:
                continue
            addr = m.group(2)
            who = "lua" if addr == b"lua" else source.get(addr, "other (" + addr.decode(errors="replace") + ")")
            count[(who, m.group(3).decode(errors="replace").upper())] += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--env", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                        help="NAME=VALUE for every service (repeatable)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-idle-"))
    env = {"CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "10", "CC_LOG_LEVEL": "warning",
           "CC_REJECT_ON_NO_AGENTS": "false", **dict(args.env)}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"whole system on loopback, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; work dir {workdir}; "
          f"env {dict(args.env) or '-'}")
    system = WholeSystem.start(workdir, tenant="bench", edge_id="edge-bench", common_env=env,
                               edge_env={"CC_SIP_INVITE_RATE": "0", "CC_SIP_INVITE_RATE_TOTAL": "0",
                                         "CC_DRAIN_TIMEOUT_S": "1"})
    peers = None
    try:
        peers = start_peers(workdir, args.seconds + args.settle_s + 120)
        provision(system, peers, FLOW, [f"a{n:04d}" for n in range(args.agents)])
        provision(system, peers, HOLD_FLOW, [])
        pids = {name: svc.proc.pid for name, svc in system.services.items() if svc.proc is not None}
        kwargs = system.redis.connection_pool.connection_kwargs
        redis_pid = int(system.redis.info("server")["process_id"])
        monitor = ServiceMonitor(kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)),
                                 workdir / "monitor.txt", pids)
        time.sleep(args.settle_s)
        hz = system.redis.config_get("hz").get("hz")
        system.redis.config_resetstat()
        every = {**pids, "redis-server": redis_pid}
        before = {name: cpu_and_wakeups(pid) for name, pid in every.items()}
        monitor.mark("start")
        load0 = os.getloadavg()[0]
        time.sleep(args.seconds)
        monitor.mark("end")
        after = {name: cpu_and_wakeups(pid) for name, pid in every.items()}
        stats = system.redis.info("commandstats")
        load1 = os.getloadavg()[0]
        monitor.stop()
    finally:
        if peers:
            peers.stop()
        system.stop()
    marks = dict(monitor.marks)
    span = marks["end"] - marks["start"]
    print(f"idle {span:.1f} s, {args.agents} agents logged in, load {load0:.2f} -> {load1:.2f}; redis hz {hz}")
    print("\nCPU ms per second, wake-ups per second (voluntary context switches, all threads):")
    for name in every:
        cpu = after[name][0] - before[name][0]
        wakes = after[name][1] - before[name][1]
        print(f"  {name:13s} {cpu * 1000 / span:7.2f} ms/s  {wakes / span:8.1f} wake-ups/s")
    cmd_us = sum(v["usec"] for v in stats.values()) / 1e3
    redis_cpu = (after["redis-server"][0] - before["redis-server"][0]) * 1000
    print(f"  redis-server: commands {cmd_us / span:.2f} ms/s inside (commandstats), the rest "
          f"{(redis_cpu - cmd_us) / span:.2f} ms/s (its event loop, hz cron, system calls)")
    count = tally(workdir / "monitor.txt", monitor.ports_of, marks["start"], marks["end"])
    print("\nRedis commands per second by source (MONITOR):")
    by_source: Counter[str] = Counter()
    for (who, _), n in count.items():
        by_source[who] += n
    for who, total in by_source.most_common():
        names = ", ".join(f"{name} {n / span:.2f}" for (w, name), n in count.most_common() if w == who)
        print(f"  {who:13s} {total / span:7.2f}/s: {names}")
    print("\nRedis commandstats per second (µs inside Redis per second):")
    for key, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"]):
        print(f"  {key.removeprefix('cmdstat_'):22s} {v['calls'] / span:7.2f}/s  {v['usec'] / span:8.1f} µs/s "
              f"({v['usec_per_call']:.1f} µs each)")


if __name__ == "__main__":
    sys.exit(main())
