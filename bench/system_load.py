"""What the benches that run a SIPp load through a whole system under faults share (bench/faults.py,
bench/replicas.py): their command line (load, agents, lapse, settle), the `Load` it describes, the
line that says what runs where, and a result's row with its examples.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from callcenter_dev.faults import FaultResult, Load


def load_parser(doc: str | None, *, rate: float, duration: float, agents: int, lapse_ms: int, settle: float,
                rate_help: str = "calls per second", duration_help: str = "seconds of new calls"
                ) -> argparse.ArgumentParser:
    """The common options with these defaults; the bench adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=rate, help=f"{rate_help} (default {rate:g})")
    parser.add_argument("--duration", type=float, default=duration, help=f"{duration_help} (default {duration:g})")
    parser.add_argument("--agents", type=int, default=agents, help=f"agents logged in (default {agents})")
    parser.add_argument("--talk-ms", type=int, default=1000, help="each call's talk time (default 1000)")
    parser.add_argument("--lapse-ms", type=int, default=lapse_ms, help=f"CC_EDGE_LAPSE_MS (default {lapse_ms})")
    parser.add_argument("--settle", type=float, default=settle,
                        help=f"at most this long for quiet after a load (default {settle:g})")
    parser.add_argument("--log-level", default="warning")
    return parser


def load_of(args: argparse.Namespace, **load: float) -> Load:
    """The load the options describe; `load` sets the rest (fault_at, call_timeout_s)."""
    return Load(rate=args.rate, duration_s=args.duration, talk_ms=args.talk_ms, settle_s=args.settle, **load)


def heartbeat_ms(args: argparse.Namespace) -> int:
    """The edge's heartbeat: a fifth of the lapse, at least 100 ms."""
    return max(100, args.lapse_ms // 5)


def print_setup(args: argparse.Namespace, load: Load, workdir: Path, per: str = "") -> None:
    """What runs where: the machine, the load (`per`: "per fault", ...), the work directory."""
    print(f"whole system on loopback, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{load.calls} calls at {args.rate:g}/s{per}, {args.agents} agents, talk {args.talk_ms} ms, "
          f"lapse {args.lapse_ms} ms; work dir {workdir}")


def print_result(result: FaultResult) -> None:
    """Its row, then the first few calls behind a loss, indented."""
    print(result.row(), flush=True)
    for line in result.examples:
        print(f"    {line}")
