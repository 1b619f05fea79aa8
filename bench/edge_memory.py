"""Where the sip-edge's memory per concurrent call goes (issue 15: <= 30 KiB with 2,000 calls up).

The whole system on loopback (`WholeSystem`, as bench/stock_calls.py), the stock SIPp peers for the
welcome, the queue and the agents, and --calls calls held up by our caller scenario (`caller.xml`,
600 s): half waiting in a flow with no agent, half connected to agents. The edge runs with
bench/memhook/ on its PYTHONPATH, which answers SIGUSR2 with a dump of its live objects (and a
tracemalloc snapshot with --trace) and SIGUSR1 with gc.collect() and malloc_trim(0).

Printed, per concurrent call (the difference between the idle edge and the edge with the calls up,
over the calls up): RSS, and RSS after gc.collect() and malloc_trim(0); glibc's heap (mallinfo2);
pymalloc's blocks in use and its losses (sys._debugmallocstats); with --trace, tracemalloc's top
allocation sites by file, file:line and stack; sippy's UAs by state with what each attribute holds;
live objects by type (count and shallow bytes from gc.get_objects()). tracemalloc costs memory and
time of its own: the RSS figure to quote is the one of a run without --trace. With --settle-s, the
same once sippy's ended legs (kept 32 s) are gone, as with calls that have been up for a while.

    .venv/bin/python bench/edge_memory.py                    # RSS, malloc and objects per call
    .venv/bin/python bench/edge_memory.py --trace 1          # + tracemalloc by file:line
    .venv/bin/python bench/edge_memory.py --calls 400 --trace 1 --rate 50    # a quicker look
    .venv/bin/python bench/edge_memory.py --settle-s 40      # + once the ended welcome legs are gone
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import stock_calls
from edge_calls import rss_kib, service_pids, stat_args, wait_idle

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem

HERE = Path(__file__).resolve().parent


def dump(pid: int, prefix: Path, n: int, timeout_s: float = 120) -> dict:
    os.kill(pid, signal.SIGUSR2)
    done = Path(f"{prefix}-{n}.done")
    if not wait_until(done.exists, timeout_s):
        raise RuntimeError(f"the edge wrote no memory dump {done} (is bench/memhook on its PYTHONPATH?)")
    return json.loads(Path(f"{prefix}-{n}.json").read_text())


def collected_rss(pid: int, prefix: Path) -> tuple[int, int]:
    """gc.collect() and malloc_trim(0) in the edge: (unreachable objects found, RSS KiB after)."""
    out = Path(f"{prefix}-collected.json")
    os.kill(pid, signal.SIGUSR1)
    wait_until(out.exists, 60)
    time.sleep(1)
    return json.loads(out.read_text())["unreachable"], rss_kib(pid)


def print_uas(after: dict, top: int) -> None:
    """sippy's UAs by state, with the attributes that hold the most (deep, each object counted once)."""
    print("\n   sippy UAs with the calls up, by state: count, bytes per UA (its object and dict; then its attributes):")
    for state, row in sorted(after.get("uas", {}).items(), key=lambda kv: -kv[1]["_count"][0]):
        count, own = row["_count"]
        attrs = sorted(((size / count, name) for name, (size, _n) in row.items() if name != "_count"), reverse=True)
        total = own / count + sum(a[0] for a in attrs)
        print(f"   {state}: {count} UAs, {total:,.0f} B each; " + ", ".join(
            f"{name} {size:,.0f}" for size, name in attrs[:top // 2]))


def print_types(before: dict, after: dict, calls: int, top: int) -> None:
    rows = []
    for name, (count, size) in after["types"].items():
        c0, s0 = before["types"].get(name, (0, 0))
        if size - s0 > 0:
            rows.append((size - s0, count - c0, name))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"\n   live objects tracked by gc, per call (shallow sys.getsizeof; strings and numbers are not tracked): "
          f"{total / calls:,.0f} B in all")
    for size, count, name in rows[:top]:
        print(f"   {size / calls:9,.0f} B {count / calls:8.1f} objects  {name}")


def print_trace(first: Path, second: Path, calls: int, top: int, stacks: int) -> None:
    s0, s1 = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(second))
    for key, label in (("filename", "file"), ("lineno", "file:line")):
        stats = s1.compare_to(s0, key)
        total = sum(s.size_diff for s in stats)
        print(f"\n   tracemalloc by {label}, per call ({total / calls:,.0f} B per call in all):")
        for s in stats[:top]:
            frame = s.traceback[0]
            where = _short(frame.filename) + (f":{frame.lineno}" if key == "lineno" else "")
            print(f"   {s.size_diff / calls:9,.0f} B {s.count_diff / calls:8.1f} blocks  {where}")
    if stacks > 1:
        print(f"\n   tracemalloc by stack (oldest frame first, the allocation last; {stacks} frames), per call:")
        for s in s1.compare_to(s0, "traceback")[:top]:
            frames = " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in s.traceback[:stacks])
            print(f"   {s.size_diff / calls:9,.0f} B {s.count_diff / calls:8.1f} blocks  {frames}")


def _short(path: str) -> str:
    for marker in ("site-packages/", "callcenter_sip_edge/", "src/callcenter/", "lib/python3"):
        if marker in path:
            return (marker if marker != "site-packages/" else "") + path.split(marker, 1)[1]
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="calls/s of the ramp")
    parser.add_argument("--trace", type=int, default=0, metavar="FRAMES", help="tracemalloc with this many frames")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--settle-s", type=float, default=0.0,
                        help="then wait this long with the calls still up (sippy keeps an ended leg 32 s) and "
                             "print what is still allocated per call")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-edgemem-"))
    prefix = workdir / "edge-mem"
    edge_env = {"CC_SIP_INVITE_RATE": "0", "CC_SIP_INVITE_RATE_TOTAL": "0", "CC_DRAIN_TIMEOUT_S": "1",
                "CC_BENCH_MEMDUMP": str(prefix),
                "PYTHONPATH": os.pathsep.join(p for p in (str(HERE / "memhook"), os.environ.get("PYTHONPATH")) if p)}
    if args.trace:
        edge_env["PYTHONTRACEMALLOC"] = str(args.trace)
    env = {"CC_WRAPUP_S": "0", "CC_LOG_LEVEL": "warning", "CC_REJECT_ON_NO_AGENTS": "false"}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"whole system on loopback, load {os.getloadavg()[0]:.2f}; work dir {workdir}; "
          f"tracemalloc {'off' if not args.trace else f'{args.trace} frame(s)'}", flush=True)
    system = WholeSystem.start(workdir, tenant="bench", edge_id="edge-bench", common_env=env, edge_env=edge_env)
    peers = None
    callers: list[Sipp] = []
    try:
        peers = stock_calls.start_peers(workdir, args.calls / args.rate + 900)
        stock_calls.provision(system, peers, stock_calls.FLOW, [f"a{n:04d}" for n in range(args.agents)])
        stock_calls.provision(system, peers, stock_calls.HOLD_FLOW, [])
        pid = service_pids(system)["sip-edge"]
        wait_idle(system, 30)
        time.sleep(2)
        rss0 = rss_kib(pid)
        before = dump(pid, prefix, 1)

        def hold(flow: str, count: int, tag: str) -> None:
            callers.append(Sipp(scenario("caller.xml"), remote=system.caller_target, service=flow, calls=count,
                                rate=args.rate, timeout_s=count / args.rate + 300,
                                extra=[*stat_args(workdir, f"mem-{tag}"), "-l", str(count + 10), "-d", "600000"]
                                ).start())
        held, connected = args.calls // 2, min(args.calls - args.calls // 2, args.agents)
        hold(stock_calls.HOLD_FLOW, held, "held")
        wait_until(lambda: system.redis.zcard(system.keys.queue(stock_calls.HOLD_FLOW)) >= held,
                   held / args.rate + 60)
        live = system.redis.scard(system.keys.calls)
        hold(stock_calls.FLOW, connected, "connected")
        free_key = system.keys.skill_free(stock_calls.FLOW)
        wait_until(lambda: args.agents - system.redis.zcard(free_key) >= connected
                   and system.redis.scard(system.keys.calls) >= live + connected, connected / args.rate + 60)
        time.sleep(3)
        up = system.redis.scard(system.keys.calls)
        rss1 = rss_kib(pid)
        after = dump(pid, prefix, 2, timeout_s=300)
        found, rss2 = collected_rss(pid, prefix)
        m0, m1 = before["mallinfo"], after["mallinfo"]
        print(f"\n== sip-edge memory: {up} calls up ({live} waiting in a flow with no agent, "
              f"{up - live} with agents)")
        print(f"   RSS {rss0 / 1024:.1f} MiB idle -> {rss1 / 1024:.1f} MiB: "
              f"**{(rss1 - rss0) / max(up, 1):.1f} KiB per concurrent call**")
        print(f"   then gc.collect() (found {found} unreachable objects, {found / max(up, 1):.1f} per call) and "
              f"malloc_trim(0): {rss2 / 1024:.1f} MiB ({(rss2 - rss0) / max(up, 1):.1f} KiB per call)")
        if m0 and m1:
            print(f"   glibc heap: in use {(m1['uordblks'] - m0['uordblks']) / up / 1024:.1f} KiB per call, free in "
                  f"its arenas {m0['fordblks'] / 1024**2:.1f} -> {m1['fordblks'] / 1024**2:.1f} MiB, mmapped "
                  f"{m0['hblkhd'] / 1024**2:.1f} -> {m1['hblkhd'] / 1024**2:.1f} MiB (the SIP thread's arena "
                  "included; pymalloc's arenas of 1 MiB are mmapped)")
        p0, p1 = before.get("pymalloc", {}), after.get("pymalloc", {})
        if p0 and p1:
            def per_call(name: str) -> str:
                return f"{(p1.get(name, 0) - p0.get(name, 0)) / up / 1024:.1f}"
            print(f"   pymalloc (objects up to 512 bytes), KiB per call: in allocated blocks "
                  f"{per_call('bytes in allocated blocks')}, free in its used pools "
                  f"{per_call('bytes in available blocks')}, in empty pools {per_call('bytes in unused pools')}, "
                  f"lost to quantization {per_call('bytes lost to quantization')}, pool headers "
                  f"{per_call('bytes lost to pool headers')}; arenas {p0.get('arenas allocated current', 0)} -> "
                  f"{p1.get('arenas allocated current', 0)}")
        if args.trace:
            print(f"   tracemalloc: {before['traced'] / 1024**2:.1f} -> {after['traced'] / 1024**2:.1f} MiB traced, "
                  f"{(after['traced'] - before['traced']) / up / 1024:.1f} KiB per call")
            print_trace(Path(f"{prefix}-1.tm"), Path(f"{prefix}-2.tm"), up, args.top, args.trace)
        print_uas(after, args.top)
        print_types(before, after, max(up, 1), args.top)
        if args.settle_s > 0:
            time.sleep(args.settle_s)
            still = system.redis.scard(system.keys.calls)
            settled = dump(pid, prefix, 3, timeout_s=300)
            q0, q1 = before.get("pymalloc", {}), settled.get("pymalloc", {})
            m2 = settled["mallinfo"]
            small = (q1.get("bytes in allocated blocks", 0) - q0.get("bytes in allocated blocks", 0)) / still / 1024
            large = (m2.get("uordblks", 0) - m0.get("uordblks", 0)) / still / 1024 if m0 else 0.0
            print(f"\n== {args.settle_s:.0f} s later, {still} calls still up: allocated per call "
                  f"{small + large:.1f} KiB "
                  f"(pymalloc {small:.1f}, glibc {large:.1f}); RSS {rss_kib(pid) / 1024:.1f} MiB (freed memory stays "
                  "with the process)")
            print_uas(settled, args.top)
    finally:
        for c in callers:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.kill()
            c.wait(10)
        if peers:
            peers.stop()
        system.stop()


if __name__ == "__main__":
    sys.exit(main())
