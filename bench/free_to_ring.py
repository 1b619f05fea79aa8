"""Issue 15, where the time goes: agent BYE -> next INVITE to that agent, hop by hop.

The whole system on loopback (`WholeSystem`), wrap-up 0, `--agents` agents (200) who hang up after
`--talk-ms` (2 s; bench/sipp/agent_hangs_up.xml), `--calls` callers (1,000) at `--rate` (100/s): a
queue is always waiting, so every agent's BYE is followed by the next call's INVITE to that agent.

Per pair (agent X hangs up, X is rung again), on clocks that all read this machine's time:
- the wire (`wire_clock.py`, a packet socket on lo; root): the kernel's stamps of the agent's BYE and
  of the next INVITE to it, µs apart: the whole path as a capture sees it;
- SIPp (the agents' phone, its own ms clock): BYE sent -> INVITE received, the whole path; its
  clock moves in steps of the kernel's coarse clock (4 ms here), so its figures are multiples of 4;
- the `ts` of the `report.call_ended` (the edge's wall clock when sippy handled the BYE);
- its entry id on `cc:{t}:reports` (Redis's clock when the edge's MULTI ran: published);
- the dispatcher's `report.call_ended_read` debug line (its batch of reports read);
- the entry id of the next `command.ring` to X on `cc:{t}:commands:<edge>` (Redis's clock inside the
  dispatcher's Lua step: step done);
- the edge's `edge.ring_read` debug line (the edge read the command) and its
  `call.agent_ringing` line (just after the INVITE went out).
The edge and the dispatcher log at debug for this (a few lines per call; the others at warning).
The streams are read as they are written by a plain XREAD here (the services trim acknowledged
entries). Hops printed (p50 / p99 / max, ms): BYE on the wire -> handled (the edge's socket,
reactor and parse; without the wire: SIPp's total minus the hops measured), handled -> published (the facts'
callback -> MULTI), published -> dispatcher read, dispatcher read -> step done (its Lua step),
step done -> edge read, edge read -> INVITE sent (sippy builds and sends, on the same thread since the
edge runs sippy on its loop), INVITE logged - on the wire (the log line's lateness), and
the totals, on the wire and by SIPp; and, per batch of datagrams the edge read, how long its first one had waited in the
socket (the kernel's receive stamp: `sip.batch_read`). Pairs where no call was waiting when the
agent hung up (the next call reported after the BYE: it was still in its welcome) are left out and
counted. Redis ids and `ts` have 1 ms resolution. Also: CPU ms per call of each service over the
run (with the debug lines), and the load average before and after.

    .venv/bin/python bench/free_to_ring.py                 # 200 agents, 1,000 calls at 100/s
    .venv/bin/python bench/free_to_ring.py --calls 300     # shorter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from edge_calls import (
    bench_scenario,
    bye_to_invite_gaps,
    cpu_seconds,
    pct,
    provision,
    service_pids,
    start_peer,
    stat_args,
    wait_idle,
)
from wire_clock import WireClock

from callcenter.contract.codec import decode
from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem

WELCOME_MS = 1000
Id = tuple[int, int]   # a stream entry id: (ms, sequence)


class StreamTap(threading.Thread):
    """Reads the reports and the edge's commands as they are appended (XREAD, no group)."""

    def __init__(self, url: str, streams: list[str]) -> None:
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(url)
        self.last = {s: "$" for s in streams}
        self.entries: list[tuple[str, str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for stream, items in self.r.xread(self.last, block=500, count=1000) or []:
                name = stream.decode()
                for entry_id, fields in items:
                    eid = entry_id.decode()
                    self.last[name] = eid
                    self.entries.append((name, eid, decode(fields, eid)))


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"   {name:<34} (none)"
    return (f"   {name:<34} p50 {pct(values, 0.5):6.1f}   p99 {pct(values, 0.99):6.1f}   "
            f"max {max(values):6.1f}   (n={len(values)})")


def log_times(logfile: Path, event: str, key: str) -> dict[str, list[float]]:
    """`key` of each `event` line in a service's JSON log -> the wall-clock ms of those lines, in order."""
    out: dict[str, list[float]] = defaultdict(list)
    for line in logfile.read_text(errors="replace").splitlines():
        if event not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") != event:
            continue
        ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp() * 1000
        out[str(rec.get(key))].append(ts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--talk-ms", type=int, default=2000)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every service (repeatable), e.g. to compare settings")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-f2r-"))
    env = {"CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "10", "CC_LOG_LEVEL": "warning", "CC_REJECT_ON_NO_AGENTS": "false",
           **dict(item.split("=", 1) for item in args.env)}
    print(f"whole system on loopback, {os.cpu_count()} cores; work dir {workdir}")
    system = WholeSystem.start(workdir, tenant="bench", edge_id="edge-bench", common_env=env,
                               edge_env={"CC_SIP_INVITE_RATE": "0", "CC_SIP_INVITE_RATE_TOTAL": "0",
                                         "CC_DRAIN_TIMEOUT_S": "1", "CC_LOG_LEVEL": "debug"},
                               dispatcher_env={"CC_LOG_LEVEL": "debug"})
    timeout = args.calls / args.rate + 120
    welcome = start_peer(workdir, "f2r-welcome", scenario("media_welcome.xml"), ["-d", str(WELCOME_MS)], timeout)
    queue = start_peer(workdir, "f2r-queue", scenario("media_queue.xml"), [], timeout)
    phones = start_peer(workdir, "f2r-agents", bench_scenario("agent_hangs_up.xml"), ["-d", str(args.talk_ms)],
                        timeout)
    keys = system.keys
    no_wire = WireClock.available()
    wire = WireClock(phones.port) if no_wire is None else None
    tap = StreamTap(system.server.url, [keys.reports, keys.commands("edge-bench")])
    try:
        agents = [f"f{n:03d}" for n in range(args.agents)]
        asyncio.run(provision(str(system.api.base_url), system.admin_key, "f2r", welcome, queue, phones, agents))
        pids = service_pids(system)
        tap.start()
        if wire is not None:
            wire.start()
        load0 = os.getloadavg()
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        caller = Sipp(scenario("caller_waits_for_bye.xml"), remote=system.caller_target, service="f2r",
                      calls=args.calls, rate=args.rate, timeout_s=timeout,
                      extra=[*stat_args(workdir, "f2r-caller"), "-l", "5000"]).start()
        rc = caller.wait()
        wait_idle(system, 30)
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        load1 = os.getloadavg()
        time.sleep(1.5)   # the phones' last log lines
    finally:
        tap.stop.set()
        if wire is not None:
            wire.stop()
        for p in (welcome, queue, phones):
            p.stop()
    edge_log, dispatcher_log = system.services["sip-edge"].logfile, system.services["dispatcher"].logfile
    try:
        rings_logged = log_times(edge_log, "call.agent_ringing", "agent_id")
        rings_read = log_times(edge_log, "edge.ring_read", "agent_id")
        batch_waits = [float(json.loads(line)["waited_ms"])
                       for line in edge_log.read_text(errors="replace").splitlines() if '"sip.batch_read"' in line]
        ends_read = {call: ts[0] for call, ts in log_times(dispatcher_log, "report.call_ended_read", "call_id").items()}
    finally:
        system.stop()
    tap.join(2)

    totals = bye_to_invite_gaps(phones.scenario_log())   # SIPp: per agent, BYE sent -> INVITE received
    on_wire = wire.bye_to_invite() if wire is not None else {}   # the same, kernel stamps on lo (s)

    # Redis: per agent, its rings in order; the call_ended (by the agent) of each call
    rings: dict[str, list[tuple[float, str, Id]]] = defaultdict(list)  # agent -> [(command id ms, call, id)]
    ended: dict[str, tuple[float, float, Id]] = {}                       # call -> (ts, report id ms, id)
    reported: dict[str, list[Id]] = defaultdict(list)                    # call -> its reports' ids
    for stream, eid, entry in tap.entries:
        ms, seq = (int(part) for part in eid.split("-"))
        if stream == keys.reports:
            reported[str(entry.data.get("call_id"))].append((ms, seq))
            if entry.type == "report.call_ended" and entry.data.get("by") == "agent":
                ended[str(entry.data["call_id"])] = (float(entry.data["ts"]), float(ms), (ms, seq))
        elif entry.type == "command.ring":
            rings[str(entry.data["agent_id"])].append((float(ms), str(entry.data["call_id"]), (ms, seq)))

    hops: dict[str, list[float]] = defaultdict(list)
    nobody_waiting = 0
    for agent, agent_rings in rings.items():
        logged, read = rings_logged.get(agent, []), rings_read.get(agent, [])
        gaps = totals.get(agent, [])
        if len(logged) != len(agent_rings) or len(read) != len(agent_rings):
            continue   # a ring refused or repeated: this agent's pairs cannot be matched one to one
        pairs = [(agent_rings[k], agent_rings[k + 1], read[k + 1], logged[k + 1]) for k in range(len(agent_rings) - 1)]
        if len(pairs) != len(gaps):
            continue
        wire_pairs = on_wire.get(agent, [])
        if len(wire_pairs) != len(pairs):
            wire_pairs = [(math.nan, math.nan)] * len(pairs)
        for ((_, call, _), (step_ms, next_call, ring_id), read_ms, ring_ms), total, (bye_s, invite_s) in zip(
                pairs, gaps, wire_pairs, strict=True):
            if call not in ended or call not in ends_read:
                continue
            ts, published, ended_id = ended[call]
            if any(ended_id < rid < ring_id for rid in reported[next_call]):
                # the next call reported something after the agent was free: it was not waiting yet
                # (in its welcome), so the agent waited for a call, not the path for the agent
                nobody_waiting += 1
                continue
            hops["handled -> published"].append(published - ts)
            hops["published -> dispatcher read"].append(ends_read[call] - published)
            hops["dispatcher read -> step done"].append(step_ms - ends_read[call])
            hops["step done -> edge read"].append(read_ms - step_ms)
            hops["edge read -> INVITE sent"].append(ring_ms - read_ms)
            hops["step done -> INVITE sent"].append(ring_ms - step_ms)
            hops["total (SIPp: BYE -> INVITE)"].append(total)
            if math.isnan(bye_s):
                hops["BYE -> handled (rest)"].append(total - (ring_ms - ts))
                continue
            hops["BYE on the wire -> handled"].append(ts - bye_s * 1000)
            hops["INVITE logged - on the wire"].append(ring_ms - invite_s * 1000)
            hops["total (wire: BYE -> INVITE)"].append((invite_s - bye_s) * 1000)

    calls_done = args.calls
    print(f"\n== agent BYE -> next INVITE to that agent, hop by hop ({args.agents} agents hanging up after "
          f"{args.talk_ms} ms, {args.calls} callers at {args.rate}/s, wrap-up 0; SIPp rc {rc})")
    print(f"   load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after {load1[0]:.2f} "
          f"{load1[1]:.2f} {load1[2]:.2f}")
    for name in ("BYE on the wire -> handled", "BYE -> handled (rest)", "handled -> published",
                 "published -> dispatcher read", "dispatcher read -> step done",
                 "step done -> edge read", "edge read -> INVITE sent",
                 "step done -> INVITE sent", "INVITE logged - on the wire", "total (wire: BYE -> INVITE)",
                 "total (SIPp: BYE -> INVITE)"):
        if hops[name] or name.startswith("total (SIPp"):   # the wire's rows or the rest, as measured
            print(row(name, hops[name]))
    if wire is None:
        print(f"   on the wire: not measured ({no_wire}); BYE -> handled is SIPp's total minus the hops")
    print(row("edge socket: 1st datagram's wait", batch_waits) + " (per batch read, whatever the datagram)")
    print(f"   left out: {nobody_waiting} pairs where no call was waiting when the agent hung up "
          "(the next call reported after the agent's BYE)")
    all_totals = [g for gs in totals.values() for g in gs]
    print(row("total, every pair SIPp saw", [float(g) for g in all_totals]) + " (SIPp's clock: 4 ms steps here)")
    if on_wire:
        print(row("total, every pair on the wire", [(inv - bye) * 1000 for gs in on_wire.values() for bye, inv in gs]))
    per_call = {name: (cpu1[name] - cpu0[name]) * 1000 / calls_done for name in pids}
    print("   CPU ms per call: " + ", ".join(f"{n} {v:.2f}" for n, v in per_call.items())
          + f" = {sum(per_call.values()):.2f} (the edge and the dispatcher log at debug)")


if __name__ == "__main__":
    main()
