"""What the sip-edge does per call, counted while a benchmark runs (issue 15: the edge's CPU per call).

Run it beside bench/stock_calls.py (or any bench that starts a `callcenter-sip-edge` from this
checkout). It finds that edge, waits until calls flow (300 caller INVITEs received), lets them
settle for 3 s, then over a window (default 12 s) reads:
- the edge's SIP message counters (its /metrics on the health port: requests by method and
  responses by code, in and out): SIP messages, i.e. datagrams, per call in and out, by kind;
- each thread of the edge from /proc/<pid>/task: user and system CPU (ticks of 10 ms) and
  voluntary / involuntary context switches, per call (calls = caller INVITEs in the window: every
  call of the stock scenarios starts with one INVITE the edge receives).
With `--syscalls`, `perf stat` counts the edge's system calls by kind over the same window (kernel
tracepoints, counted in the kernel: no trace is written): epoll_wait is one asyncio loop iteration,
so "loop iterations per call" is what separates more work per call from slower work per call.
With `--py-spy FILE`, py-spy samples the edge over the same window with `--gil` (only the thread
holding the GIL: the Python work, not the waits for the GIL or in system calls) into FILE (raw,
collapsed stacks).

    .venv/bin/python bench/edge_counts.py &
    .venv/bin/python bench/stock_calls.py --rates 100 --skip-latency --skip-memory
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS_FLOWING = 300   # caller INVITEs before the window may start
SETTLE_S = 3.0
_COUNTER = re.compile(r'callcenter_sip_(requests|responses|retransmissions)_total\{(.*)\} ([0-9.e+]+)')
_INVITES_IN = 'requests{direction="in",method="INVITE"}'
SYSCALLS = ("epoll_wait", "recvmsg", "recvfrom", "sendto", "write", "read", "futex", "clock_gettime", "getpid")


def find_edge() -> tuple[int, int] | None:
    """(pid, health port) of a sip-edge started from this checkout, or None."""
    marker = f"{ROOT}/".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"callcenter-sip-edge" not in cmdline or marker not in cmdline or b"py-spy" in cmdline:
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ports = [item.split(b"=", 1)[1] for item in env if item.startswith(b"CC_HEALTH_PORT=")]
        if ports:
            return int(entry), int(ports[0])
    return None


def sip_counters(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f"{m.group(1)}{{{m.group(2)}}}": float(m.group(3)) for m in map(_COUNTER.match, text.splitlines()) if m}


def thread_counts(pid: int) -> dict[str, tuple[int, int, int, int]]:
    """Per thread 'name/tid': (user ticks, system ticks, voluntary, involuntary context switches)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        vol = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
        invol = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
        out[f"{name}/{tid}"] = (int(fields[11]), int(fields[12]), int(vol.group(1)) if vol else 0,
                                int(invol.group(1)) if invol else 0)
    return out


def wait_for_calls() -> tuple[int, int]:
    """(pid, health port) of the edge once calls flow through it. The edge found first may not be
    the one that takes the calls (the whole-system harness starts it again on another port when its
    port was taken meanwhile): one that does not answer is looked for again."""
    base: float | None = None
    found = None
    while True:
        if found is None:
            while (found := find_edge()) is None:
                time.sleep(0.5)
            base = None
        try:
            invites = sip_counters(found[1]).get(_INVITES_IN, 0.0)
        except OSError:   # not listening yet, or gone
            found = None if not Path(f"/proc/{found[0]}").exists() else found
            time.sleep(0.5)
            continue
        if base is None:
            base = invites
        elif invites >= base + CALLS_FLOWING:
            time.sleep(SETTLE_S)
            return found
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window-s", type=float, default=12.0)
    parser.add_argument("--syscalls", action="store_true", help="perf stat: the edge's system calls by kind")
    parser.add_argument("--py-spy", metavar="FILE", help="py-spy --gil over the window into FILE (raw)")
    args = parser.parse_args()
    pid, port = wait_for_calls()
    print(f"sip-edge pid {pid}, health port {port}", flush=True)
    spy = None
    if args.py_spy:
        command = [str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--threads", "-r", "100",
                   "-d", str(int(args.window_s)), "--format", "raw", "-o", args.py_spy, "-p", str(pid)]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    perf = None
    if args.syscalls:
        events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{name}" for name in SYSCALLS]
        perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(events), "-p", str(pid), "--",
                                 "sleep", str(args.window_s)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    c0, t0, w0 = sip_counters(port), thread_counts(pid), time.monotonic()
    time.sleep(args.window_s)
    c1, t1, w1 = sip_counters(port), thread_counts(pid), time.monotonic()
    if spy is not None:
        spy.wait()
    syscalls = perf.communicate()[1] if perf is not None else ""
    calls = c1.get(_INVITES_IN, 0.0) - c0.get(_INVITES_IN, 0.0)
    if calls <= 0:
        sys.exit("no call in the window")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"window {w1 - w0:.1f} s: {calls:.0f} calls ({calls / (w1 - w0):.1f}/s); load {load}")
    totals = {"in": 0.0, "out": 0.0}
    for key in sorted(set(c0) | set(c1)):
        delta = c1.get(key, 0.0) - c0.get(key, 0.0)
        if not delta:
            continue
        print(f"  {key:55s} {delta:8.0f}  {delta / calls:6.2f} per call")
        direction = "in" if 'direction="in"' in key else "out"
        if not key.startswith("retransmissions"):
            totals[direction] += delta
    print(f"  SIP messages per call: in {totals['in'] / calls:.2f}, out {totals['out'] / calls:.2f}")
    all_ticks = 0
    for name in sorted(t1):
        if name not in t0:
            continue
        (u0, s0, v0, i0), (u1, s1, v1, i1) = t0[name], t1[name]
        ticks = (u1 - u0) + (s1 - s0)
        all_ticks += ticks
        if ticks or v1 - v0 > calls:
            print(f"  thread {name:26s} user {u1 - u0:5d} system {s1 - s0:4d} ticks = {10 * ticks / calls:.2f} ms "
                  f"per call; context switches per call: voluntary {(v1 - v0) / calls:.1f}, "
                  f"involuntary {(i1 - i0) / calls:.1f}")
    print(f"  all threads: {10 * all_ticks / calls:.2f} ms CPU per call over the window")
    for line in syscalls.splitlines():   # perf stat -x,: count,unit,event,...
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            name = fields[2].replace("raw_syscalls:sys_enter", "all system calls").replace("syscalls:sys_enter_", "")
            print(f"  {name:30s} {int(fields[0]):9d}  {int(fields[0]) / calls:7.2f} per call")


if __name__ == "__main__":
    main()
