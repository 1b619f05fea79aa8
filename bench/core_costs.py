"""CPU per call of the dispatcher, the cdr-writer and redis-server, without the SIP edge (issue 15).

A private redis-server, a real `callcenter-dispatcher` and a real `callcenter-cdr-writer` (SQLite
file, as the whole-system harness uses) as processes; this script plays the sip-edge's half of the
report contract in-process, closed loop, on the timings of `bench/edge_calls.py`: per call
`report.call_arrived` -> (on `command.media` welcome) `report.media_answered`, then 1 s later
`report.media_ended` -> (on `command.ring`) `report.agent_answered` at once -> 2 s later
`report.call_ended` (the caller hangs up). A queue `command.media` is answered too. The edge id
beats (`edge_beat.lua`) every second, as a live edge does. One flow, `--agents` agents, wrap-up 0.

Measured from the first arrival until every call has ended, every CDR row is written and both
consumer groups have nothing pending: CPU seconds (/proc/<pid>/stat utime+stime) per call of each
process, its system calls that read and that write and its wake-ups per call (/proc/<pid>/io,
voluntary context switches: counts the machine's load moves far less than CPU time), and Redis' own
accounting per call (INFO commandstats: calls and µs per command). The redis-server figure includes
what this edge stand-in asks of it (report XADDs, command reads, heartbeats) but not the real
edge's dialog checkpoints; the dispatcher and cdr-writer figures are theirs alone. With `--profile
DIR`, py-spy (non-blocking) samples both services over the run and the top functions are printed
(raw files kept in DIR).

    .venv/bin/python bench/core_costs.py                     # 100 calls/s for 20 s
    .venv/bin/python bench/core_costs.py --rate 100 --seconds 20 --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from callcenter.contract.codec import decode, encode
from callcenter.store import Store
from callcenter_dev.bench_state import one_flow_with_agents
from callcenter_dev.processes import console_script
from callcenter_dev.servers import RedisServer

TENANT = "bench"
EDGE = "edge-core"
FLOW = "bench"
WELCOME_MS, TALK_MS = 1000, 2000
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def io_counts(pid: int) -> tuple[int, int, int]:
    """System calls that read and that write (/proc/<pid>/io syscr, syscw) and voluntary context
    switches (the times the process slept: its wake-ups), whatever the machine's load."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    status = dict(line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    return int(io["syscr"]), int(io["syscw"]), int(status["voluntary_ctxt_switches"])


def now_ms() -> int:
    return int(time.time() * 1000)


class EdgeStandIn:
    """The sip-edge's reports for each call, answering the commands the dispatcher sends."""

    def __init__(self, redis: aioredis.Redis, store: Store) -> None:
        self.redis = redis
        self.store = store
        self.out: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()  # written in order, pipelined
        self.seq: dict[str, int] = collections.defaultdict(int)
        self.ended = 0
        self.commands: collections.Counter[str] = collections.Counter()
        self.tasks: set[asyncio.Task[None]] = set()

    async def report(self, rtype: str, call_id: str, **data: Any) -> None:
        self.seq[call_id] += 1
        self.out.put_nowait((rtype, {"call_id": call_id, "edge": EDGE, "seq": self.seq[call_id], "ts": now_ms(),
                                     **data}))

    async def write_reports(self, stop: asyncio.Event) -> None:
        """Append the queued reports in order, those queued meanwhile in one pipeline (as the edge
        batches its report writes)."""
        while not (stop.is_set() and self.out.empty()):
            try:
                first = await asyncio.wait_for(self.out.get(), 0.2)
            except TimeoutError:
                continue
            batch = [first]
            while not self.out.empty():
                batch.append(self.out.get_nowait())
            async with self.redis.pipeline(transaction=False) as pipe:
                for rtype, data in batch:
                    pipe.xadd(self.store.keys.reports, encode(rtype, data))  # type: ignore[arg-type]
                await pipe.execute()

    def later(self, delay_ms: int, rtype: str, call_id: str, **data: Any) -> None:
        async def fire() -> None:
            await asyncio.sleep(delay_ms / 1000)
            await self.report(rtype, call_id, **data)
            if rtype == "report.call_ended":
                self.ended += 1
        task = asyncio.create_task(fire())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def arrive(self, n: int) -> None:
        call_id = f"c{n}"
        await self.report("report.call_arrived", call_id, flow=FLOW, caller=f"caller{n}",
                          caller_uri=f"sip:caller{n}@127.0.0.1", sip_call_id=f"{n}@bench", source="127.0.0.1:5060")

    async def follow_commands(self, stop: asyncio.Event) -> None:
        last = "0-0"
        stream = self.store.keys.commands(EDGE)
        while not stop.is_set():
            resp = await self.redis.xread({stream: last}, count=500, block=200)
            for _, entries in resp or []:
                for eid, fields in entries:
                    last = eid
                    cmd = decode(fields, eid)
                    self.commands[cmd.type] += 1
                    call_id = cmd.data["call_id"]
                    if cmd.type == "command.media":
                        purpose, uri = cmd.data["purpose"], cmd.data["uri"]
                        await self.report("report.media_answered", call_id, purpose=purpose, uri=uri)
                        if purpose == "welcome":
                            self.later(WELCOME_MS, "report.media_ended", call_id, purpose=purpose)
                    elif cmd.type == "command.ring":
                        await self.report("report.agent_answered", call_id, offer_id=cmd.data["offer_id"],
                                          agent_id=cmd.data["agent_id"])
                        self.later(TALK_MS, "report.call_ended", call_id, by="caller", reason="bye")


async def beat(store: Store, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await store.edge_beat(EDGE, "core-costs", 10_000)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def group_idle(r: aioredis.Redis, stream: str) -> bool:
    groups = await r.xinfo_groups(stream)
    return bool(groups) and all(int(g.get("lag") or 0) == 0 and int(g["pending"]) == 0 for g in groups)


def summarize_profile(path: Path, service: str, top: int = 14) -> None:
    """Print the functions with the largest inclusive share of the non-idle samples."""
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if "select (selectors.py" in frames[-1]:
            continue  # waiting in epoll: idle
        total += int(count)
        for name in {f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in frames}:
            incl[name] += int(count)
    print(f"   {service}: {total} busy samples; inclusive share of the busy samples:")
    for name, n in incl.most_common(top + 8)[8:]:  # the first ones are the event loop's frames
        print(f"      {n * 100 / max(total, 1):5.1f}%  {name}")


def start_services(workdir: Path, env: dict[str, str],
                   dispatcher_env: dict[str, str]) -> dict[str, subprocess.Popen[bytes]]:
    procs = {}
    for name in ("dispatcher", "cdr-writer"):
        own = {**env, **dispatcher_env} if name == "dispatcher" else env
        with open(workdir / f"{name}.log", "wb") as log:
            procs[name] = subprocess.Popen([console_script(name)], env=own, stdout=subprocess.DEVNULL, stderr=log)
    return procs


def start_spies(prof: Path, pids: dict[str, int], seconds: int) -> list[subprocess.Popen[bytes]]:
    prof.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [subprocess.Popen([spy, "record", "--nonblocking", "-r", "200", "-d", str(seconds), "--format", "raw",
                              "-o", str(prof / f"{name}.txt"), "-p", str(pids[name])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name in ("dispatcher", "cdr-writer")]


def cdr_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("select count(*) from cdrs").fetchone()[0])


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="cc-core-costs-"))
    server = RedisServer().start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    spies: list[subprocess.Popen[bytes]] = []
    r = aioredis.Redis.from_url(server.url)
    try:
        store = Store(r, TENANT)
        await one_flow_with_agents(store, FLOW, args.agents)
        await store.edge_beat(EDGE, "core-costs", 10_000)
        env = {**os.environ, "CC_REDIS_URL": server.url, "CC_TENANT": TENANT, "CC_LOG_LEVEL": "warning",
               "CC_LOG_FORMAT": "json", "CC_WRAPUP_S": "0", "CC_REJECT_ON_NO_AGENTS": "false",
               "CC_RING_TIMEOUT_S": "10", "CC_DATABASE_URL": f"sqlite:///{workdir / 'cc.sqlite3'}"}
        procs.update(start_services(workdir, {**env, **dict(args.env)}, dict(args.dispatcher_env)))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both groups exist: the services are up and reading
            try:
                if (await r.xinfo_groups(store.keys.reports)) and (await r.xinfo_groups(store.keys.events)):
                    break
            except aioredis.ResponseError:
                pass
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        pids = {name: p.pid for name, p in procs.items()}
        pids["redis-server"] = server.proc.pid if server.proc else 0
        calls = int(args.rate * args.seconds)
        if args.profile:
            spies = start_spies(Path(args.profile), pids, int(args.seconds + 6))
        edge = EdgeStandIn(r, store)
        stop = asyncio.Event()
        loops = [asyncio.create_task(edge.follow_commands(stop)), asyncio.create_task(beat(store, stop)),
                 asyncio.create_task(edge.write_reports(stop))]
        await r.config_resetstat()
        load = os.getloadavg()
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        io_before = {name: io_counts(pid) for name, pid in pids.items()}
        started = time.monotonic()
        for n in range(calls):
            delay = started + n / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await edge.arrive(n)
        sent_s = time.monotonic() - started
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (edge.ended >= calls and await r.scard(store.keys.calls) == 0
                    and await group_idle(r, store.keys.reports) and await group_idle(r, store.keys.events)):
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        io = {name: [b - a for a, b in zip(io_before[name], io_counts(pid), strict=True)] for name, pid in pids.items()}
        stats = await r.info("commandstats")
        stop.set()
        await asyncio.gather(*loops)
        rows = cdr_rows(workdir / "cc.sqlite3")
        print(f"{calls} calls at {args.rate}/s (sent in {sent_s:.1f} s, drained at {elapsed:.1f} s), "
              f"{args.agents} agents; "
              f"ended {edge.ended}, CDR rows {rows}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
              f"env {dict(args.env) or '-'}, dispatcher {dict(args.dispatcher_env) or '-'}")
        print("   CPU ms per call: " + ", ".join(f"{name} {s * 1000 / calls:.2f}" for name, s in cpu.items())
              + "   (% of one core: " + ", ".join(f"{name} {s * 100 / elapsed:.0f}" for name, s in cpu.items()) + ")")
        print("   per call, system calls that read / write, wake-ups: " + ", ".join(
            f"{name} {r / calls:.2f} / {w / calls:.2f}, {v / calls:.2f}" for name, (r, w, v) in io.items()))
        rows_cs = sorted(((k.removeprefix("cmdstat_"), v) for k, v in stats.items()), key=lambda kv: -kv[1]["usec"])
        total_us = sum(v["usec"] for _, v in rows_cs)
        print(f"   Redis commandstats per call (µs inside Redis per call: {total_us / calls:.0f}; "
              f"a script's µs include its inner commands, listed too):")
        for name, v in rows_cs[:args.top]:
            print(f"      {name:<20} {v['calls'] / calls:6.2f} calls  {v['usec'] / calls:7.1f} µs  "
                  f"({v['usec_per_call']:.1f} µs each)")
        print(f"   commands seen by the edge stand-in: {dict(edge.commands)}")
        for spy_proc in spies:
            spy_proc.wait(30)
        if args.profile:
            for name in ("dispatcher", "cdr-writer"):
                path = Path(args.profile) / f"{name}.txt"
                if path.exists():
                    summarize_profile(path, name)
    finally:
        for p in spies:
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        await r.aclose()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--top", type=int, default=14, help="Redis commands listed")
    ap.add_argument("--profile", default="", help="a directory: py-spy both services into it")
    ap.add_argument("--env", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                    help="NAME=VALUE for both services (e.g. CC_READ_LINGER_MS=0); repeatable")
    ap.add_argument("--dispatcher-env", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                    help="NAME=VALUE for the dispatcher only; repeatable")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
