"""Many replicas at a larger load (issue 13, acceptance 2): tests/e2e/test_replicas.py's run with
more calls. 2 sip-edges, 3 dispatchers, 2 cdr-writers, 2 apis, 2 celery workers and beat
(callcenter_dev.replicas); one SIPp caller per edge; while the load runs, one process of each kind
is SIGKILLed in turn every --gap seconds (callcenter_dev.replica_faults.STEPS), then the fault
suite's measurement (callcenter_dev.faults.Rig.measure): calls, CDRs, wrong CDRs, duplicates,
agents not free, live calls, pending and dead entries. Exit status 1 on any loss.

    .venv/bin/python bench/replicas.py                            # 20 calls/s for 60 s: ~2 minutes
    .venv/bin/python bench/replicas.py --rate 40 --duration 90 --agents 120 --gap 10

Bounded: --rate * --duration calls, SIPp runs with their own timeouts, at most --settle seconds of
waiting after the load.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from callcenter_dev.faults import Load
from callcenter_dev.replica_faults import STEPS, ReplicaRig, in_turn
from callcenter_dev.replicas import Counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="calls per second over both edges (default 20)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of new calls (default 60)")
    parser.add_argument("--agents", type=int, default=60, help="agents logged in (default 60)")
    parser.add_argument("--talk-ms", type=int, default=1000, help="each call's talk time (default 1000)")
    parser.add_argument("--gap", type=float, default=8.0, help="seconds between two kills (default 8)")
    parser.add_argument("--lapse-ms", type=int, default=3000, help="CC_EDGE_LAPSE_MS (default 3000)")
    parser.add_argument("--settle", type=float, default=60.0, help="at most this long for quiet after the load")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    load = Load(rate=args.rate, duration_s=args.duration, talk_ms=args.talk_ms, fault_at=0.15,
                settle_s=args.settle, call_timeout_s=20)
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-replicas-"))
    print(f"whole system on loopback, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{load.calls} calls at {args.rate:g}/s, {args.agents} agents, talk {args.talk_ms} ms, "
          f"lapse {args.lapse_ms} ms; work dir {workdir}")
    rig = ReplicaRig.start_many(workdir, Counts(), agents=args.agents, lapse_ms=args.lapse_ms,
                                heartbeat_ms=max(100, args.lapse_ms // 5), log_level=args.log_level)
    fault = in_turn(STEPS, gap_s=args.gap)
    try:
        result = rig.run(fault, load)
    finally:
        rig.stop()
    with sqlite3.connect(f"file:{workdir / 'cc.sqlite3'}?mode=ro", uri=True) as conn:
        per_edge = dict(conn.execute("SELECT edge, count(*) FROM cdrs WHERE attempt = 0 GROUP BY edge").fetchall())
    print(fault.doc)
    print(result.HEADER)
    print(result.row())
    for line in result.examples:
        print(f"    {line}")
    print(f"final CDRs by edge {per_edge}; attempt rows {result.attempt_rows}; failed calls explained "
          f"(the killed edge's) by edge {result.explained_edges}; replaced {', '.join(result.replaced)}; "
          f"load average now {os.getloadavg()[0]:.1f}")
    return 1 if result.lost else 0


if __name__ == "__main__":
    sys.exit(main())
