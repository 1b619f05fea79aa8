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

import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from system_load import heartbeat_ms, load_of, load_parser, print_result, print_setup

from callcenter_dev.replica_faults import STEPS, ReplicaRig, in_turn
from callcenter_dev.replicas import Counts


def main() -> int:
    parser = load_parser(__doc__, rate=20.0, duration=60.0, agents=60, lapse_ms=3000, settle=60.0,
                         rate_help="calls per second over both edges")
    parser.add_argument("--gap", type=float, default=8.0, help="seconds between two kills (default 8)")
    args = parser.parse_args()
    load = load_of(args, fault_at=0.15, call_timeout_s=20)
    workdir = Path(tempfile.mkdtemp(prefix="cc-bench-replicas-"))
    print_setup(args, load, workdir)
    rig = ReplicaRig.start_many(workdir, Counts(), agents=args.agents, lapse_ms=args.lapse_ms,
                                heartbeat_ms=heartbeat_ms(args), log_level=args.log_level)
    fault = in_turn(STEPS, gap_s=args.gap)
    try:
        result = rig.run(fault, load)
    finally:
        rig.stop()
    with sqlite3.connect(f"file:{workdir / 'cc.sqlite3'}?mode=ro", uri=True) as conn:
        per_edge = dict(conn.execute("SELECT edge, count(*) FROM cdrs WHERE attempt = 0 GROUP BY edge").fetchall())
    print(fault.doc)
    print(result.HEADER)
    print_result(result)
    print(f"final CDRs by edge {per_edge}; attempt rows {result.attempt_rows}; failed calls explained "
          f"(the killed edge's) by edge {result.explained_edges}; replaced {', '.join(result.replaced)}; "
          f"load average now {os.getloadavg()[0]:.1f}")
    return 1 if result.lost else 0


if __name__ == "__main__":
    sys.exit(main())
