"""The sip-edge's Redis commands per call, counted (issue 15: the edge's asyncio thread).

Starts the whole system on loopback with a redis-server of its own (`WholeSystem`, as
bench/stock_calls.py does, with its stock SIPp peers: welcome 1 s, talk 2 s, 1,000 agents), lets it
sit idle for `--idle-s` and then offers `--calls` calls at `--rate`/s. Over both, a MONITOR
connection to that redis-server copies every command it runs to a file (raw: nothing is parsed
while calls flow), and the edge's TCP connections to Redis are sampled from /proc every 0.2 s, so
each command is attributed to the process that sent it by its client address. Afterwards it prints,
for the edge's commands only:
- per command name: how many per answered call, and the request bytes per call (the RESP encoding
  of the command as the edge sent it); MULTI counts the transactions;
- the same for the idle period, per second (heartbeats, blocked reads timing out, reclaims), so
  what a call adds can be told from what the edge does anyway;
- the CPU of each of the edge's threads over the step, per call (the asyncio thread is the main
  thread: reports, checkpoints, commands, heartbeats; the SIP thread is the busiest other one).

Counts are deterministic where the edge's code decides them (one XADD per report, the HSETs of a
checkpoint); what depends on timing (how many reports share a MULTI, how many reads a blocked
XREADGROUP needs) is printed as measured, so run it with the same arguments before and after.

    .venv/bin/python bench/edge_redis_commands.py                      # 600 calls at 50/s
    .venv/bin/python bench/edge_redis_commands.py --rate 100 --calls 2000
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from edge_counts import thread_counts
from stock_calls import FLOW, HOLD_FLOW, provision, run_step, start_peers

from callcenter_dev.system import WholeSystem

SAMPLE_S = 0.2
# a MONITOR line: `<ts> [<db> <client addr>] "CMD" "arg" ...` (a script's commands show `lua`)
_LINE = re.compile(rb'^\+?(\d+\.\d+) \[\d+ ([^\]]+)\] (.*)$')
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(rb'\\(x[0-9a-fA-F]{2}|.)')


def edge_ports(pid: int) -> set[int]:
    """Local TCP ports of `pid`'s connected sockets (its connections to Redis, its health port's clients)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[9] in inodes and f[3] == "01":   # ESTABLISHED
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


class Monitor:
    """MONITOR of a redis-server into a file, and the edge's client ports sampled meanwhile."""

    def __init__(self, host: str, port: int, out: Path, edge_pid: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.sendall(b"MONITOR\r\n")
        self.out = out.open("wb")
        self.edge_pid = edge_pid
        self.ports: set[int] = set()
        self.marks: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._copy, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for t in self._threads:
            t.start()

    def _copy(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.out.write(data)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.ports |= edge_ports(self.edge_pid)
            time.sleep(SAMPLE_S)

    def mark(self, name: str) -> None:
        """A point in time (the redis-server's clock is this machine's)."""
        self.marks.append((name, time.time()))

    def stop(self) -> None:
        time.sleep(0.5)   # the last lines in flight
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(timeout=2)
        self.out.close()


def _request_bytes(args: list[bytes]) -> int:
    """The RESP size of a command with these (unescaped-length) arguments."""
    return len(f"*{len(args)}\r\n") + sum(len(f"${len(a)}\r\n") + len(a) + 2 for a in args)


def _unescape_len(arg: bytes) -> bytes:
    return _ESCAPE.sub(b"_", arg)   # one byte per escape: only lengths are needed


def tally(path: Path, ports: set[int], start: float, end: float) -> tuple[Counter[str], Counter[str]]:
    """(commands, request bytes) by command name, of the edge's clients between `start` and `end`."""
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    wanted = {f"127.0.0.1:{p}".encode() for p in ports}
    with path.open("rb") as f:
        for raw in f:
            m = _LINE.match(raw.rstrip(b"\r\n"))
            if m is None or m.group(2) not in wanted:
                continue
            ts = float(m.group(1))
            if not start <= ts < end:
                continue
            args = [_unescape_len(a) for a in _ARG.findall(m.group(3))]
            if not args:
                continue
            name = args[0].decode(errors="replace").upper()
            count[name] += 1
            size[name] += _request_bytes(args)
    return count, size


def print_table(title: str, count: Counter[str], size: Counter[str], per: float, unit: str) -> None:
    print(f"\n{title}")
    print(f"  {'command':14s} {'per ' + unit:>10s} {'bytes per ' + unit:>16s}")
    for name, n in sorted(count.items(), key=lambda kv: -kv[1]):
        print(f"  {name:14s} {n / per:10.2f} {size[name] / per:16.0f}")
    total, total_bytes = sum(count.values()), sum(size.values())
    print(f"  {'all':14s} {total / per:10.2f} {total_bytes / per:16.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-edgeredis-"))
    env = {"CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "10", "CC_LOG_LEVEL": args.log_level,
           "CC_REJECT_ON_NO_AGENTS": "false"}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"whole system on loopback, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; work dir {workdir}")
    system = WholeSystem.start(workdir, tenant="bench", edge_id="edge-bench", common_env=env,
                               edge_env={"CC_SIP_INVITE_RATE": "0", "CC_SIP_INVITE_RATE_TOTAL": "0",
                                         "CC_DRAIN_TIMEOUT_S": "1"})
    peers = None
    try:
        peers = start_peers(workdir, args.calls / args.rate + args.idle_s + 300)
        provision(system, peers, FLOW, [f"a{n:04d}" for n in range(args.agents)])
        provision(system, peers, HOLD_FLOW, [])
        edge_pid = system.edge.proc.pid if system.edge.proc is not None else 0
        kwargs = system.redis.connection_pool.connection_kwargs
        monitor = Monitor(kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)), workdir / "monitor.txt",
                          edge_pid)
        time.sleep(1.0)
        monitor.mark("idle")
        time.sleep(args.idle_s)
        monitor.mark("calls")
        t0 = thread_counts(edge_pid)
        step = run_step(system, peers, workdir, args.rate, args.calls)
        t1 = thread_counts(edge_pid)
        monitor.mark("end")
        monitor.stop()
    finally:
        if peers:
            peers.stop()
        system.stop()
    marks = dict(monitor.marks)
    answered = step.answered
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"\n{args.calls} calls offered at {args.rate:g}/s: {answered} answered, {step.failed} failed, "
          f"{step.retransmissions} retransmissions; step {step.elapsed_s:.1f} s (drain {step.drain_s:.1f} s); "
          f"load at the end {load}; edge client ports seen {len(monitor.ports)}")
    if answered <= 0:
        sys.exit("no call answered")
    idle_count, idle_size = tally(workdir / "monitor.txt", monitor.ports, marks["idle"], marks["calls"])
    count, size = tally(workdir / "monitor.txt", monitor.ports, marks["calls"], marks["end"])
    print_table(f"edge, idle ({args.idle_s:g} s)", idle_count, idle_size, args.idle_s, "s")
    print_table(f"edge, calls ({answered} answered, {marks['end'] - marks['calls']:.1f} s)", count, size,
                answered, "call")
    if count["MULTI"]:
        inside = sum(n for k, n in count.items() if k not in ("MULTI", "EXEC"))
        print(f"  transactions per call {count['MULTI'] / answered:.2f}; all commands per transaction "
              f"{inside / count['MULTI']:.1f}")
    print(f"\nedge threads over the step ({step.elapsed_s:.1f} s, ticks of 10 ms; main = the asyncio thread)")
    all_ticks = 0
    for name in sorted(t1, key=lambda n: -(sum(t1[n][:2]) - sum(t0.get(n, (0, 0, 0, 0))[:2]))):
        if name not in t0:
            continue
        (u0, s0, v0, _), (u1, s1, v1, _) = t0[name], t1[name]
        ticks = (u1 - u0) + (s1 - s0)
        all_ticks += ticks
        if ticks:
            main_thread = " (main: asyncio)" if name.endswith(f"/{edge_pid}") else ""
            print(f"  thread {name}{main_thread}: {ticks} ticks = {10 * ticks / answered:.2f} ms per call "
                  f"(user {u1 - u0}, system {s1 - s0}; voluntary switches per call {(v1 - v0) / answered:.1f})")
    print(f"  all threads: {10 * all_ticks / answered:.2f} ms per call")


if __name__ == "__main__":
    sys.exit(main())
