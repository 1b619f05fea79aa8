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

import os
import sys
import tempfile
import time
from pathlib import Path

from system_load import heartbeat_ms, load_of, load_parser, print_result, print_setup

from callcenter_dev.faults import FAULTS, FaultResult, Rig


def main() -> int:
    parser = load_parser(__doc__, rate=20.0, duration=30.0, agents=30, lapse_ms=5000, settle=30.0,
                         duration_help="seconds of new calls per fault")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order (default: all)")
    args = parser.parse_args()
    names = [n for n in args.faults.split(",") if n]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    load = load_of(args, call_timeout_s=30)
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-faults-"))
    print_setup(args, load, workdir, " per fault")
    rig = Rig.start(workdir, agents=args.agents, lapse_ms=args.lapse_ms, heartbeat_ms=heartbeat_ms(args),
                    log_level=args.log_level)
    results: list[FaultResult] = []
    started = time.monotonic()
    try:
        print(FaultResult.HEADER)
        for name in names:
            result = rig.run(FAULTS[name], load)
            results.append(result)
            print_result(result)
    finally:
        rig.stop()
    lost = [r.fault for r in results if r.lost]
    print(f"{len(results)} faults in {time.monotonic() - started:.0f} s, load average now {os.getloadavg()[0]:.1f}; "
          + (f"loss in: {', '.join(lost)}" if lost else "no loss"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
