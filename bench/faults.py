"""The fault suite at scale (issue 9, acceptance 5): every fault of callcenter_dev.faults in turn on
one whole system (loopback processes, redis-server with its AOF), each under a SIPp load of --rate
calls/s for --duration seconds with --agents agents (1 s talk), the fault at 40 % of the load; then
up to 30 s for the system to be quiet, and a measurement from outside (SIPp's files, the SQL CDRs,
Redis). One row per fault; exit status 1 if any fault lost anything (see the library's docstring
for what counts as loss), 0 otherwise.

    .venv/bin/python bench/faults.py                       # 12 faults, ~30 s of load each: ~12 minutes
    .venv/bin/python bench/faults.py --faults sip-edge-kill,redis-restart-2s --rate 10 --duration 10

Bounded: --rate * --duration calls per fault, each SIPp run with its own timeout, at most --settle
seconds of waiting after each load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from callcenter_dev.faults import FAULTS, FaultResult, Load, Rig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="calls per second (default 20)")
    parser.add_argument("--agents", type=int, default=30, help="agents logged in (default 30)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of new calls per fault (default 30)")
    parser.add_argument("--talk-ms", type=int, default=1000, help="each call's talk time (default 1000)")
    parser.add_argument("--settle", type=float, default=30.0, help="at most this long for quiet after a load")
    parser.add_argument("--lapse-ms", type=int, default=5000, help="CC_EDGE_LAPSE_MS (default 5000)")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order (default: all)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    names = [n for n in args.faults.split(",") if n]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    load = Load(rate=args.rate, duration_s=args.duration, talk_ms=args.talk_ms, settle_s=args.settle,
                call_timeout_s=30)
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-faults-"))
    print(f"whole system on loopback, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{load.calls} calls at {args.rate:g}/s per fault, {args.agents} agents, talk {args.talk_ms} ms, "
          f"lapse {args.lapse_ms} ms; work dir {workdir}")
    rig = Rig.start(workdir, agents=args.agents, lapse_ms=args.lapse_ms, heartbeat_ms=max(100, args.lapse_ms // 5),
                    log_level=args.log_level)
    results: list[FaultResult] = []
    started = time.monotonic()
    try:
        print(FaultResult.HEADER)
        for name in names:
            result = rig.run(FAULTS[name], load)
            results.append(result)
            print(result.row(), flush=True)
            for line in result.examples:
                print(f"    {line}")
    finally:
        rig.stop()
    lost = [r.fault for r in results if r.lost]
    print(f"{len(results)} faults in {time.monotonic() - started:.0f} s, load average now {os.getloadavg()[0]:.1f}; "
          + (f"loss in: {', '.join(lost)}" if lost else "no loss"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
