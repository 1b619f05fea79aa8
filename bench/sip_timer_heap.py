"""CPU per call of sippy's timers, the edge's pattern, with and without `timer_heap` (issue 15).

Per "call": 26 sippy Timeouts started (sixteen 0.5 s / 32 s transaction timers A and B, two 300 s
INVITE expiries, ring and session timers, two immediate ones), 23 of them cancelled, then one pass of
the due timers, as the edge's reactor runs it after each datagram batch. The calls follow each other
faster than the long timers expire, so the heap grows as it does over the 32-300 s such timers live
at 100 calls/s (--calls 4000: ~60,000 entries without the clean-up). One child process per variant,
alternated; process_time of the child only.

    .venv/bin/python bench/sip_timer_heap.py --calls 4000 --runs 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

DURATIONS = [0.5, 32.0] * 8 + [300.0, 300.0, 90.0, 90.0, 10.0, 1.0, 0.0, 0.0, 2.0, 4.0]
CANCELLED = 23


def _child(variant: str, calls: int) -> None:
    from callcenter_sip_edge.sippy import patches, timer_heap

    patches.apply_patches()
    from sippy.Core.EventDispatcher import ED2, EventDispatcher2
    from sippy.Time.MonoTime import MonoTime
    from sippy.Time.Timeout import Timeout

    if variant == "without":
        EventDispatcher2.dispatchTimers = timer_heap.ORIGINALS["EventDispatcher2.dispatchTimers"]
    started = time.process_time()
    for n in range(calls):
        made = [Timeout(lambda *args: None, duration, 1, n) for duration in DURATIONS]
        for el in made[:CANCELLED]:
            el.cancel()
        ED2.last_ts = MonoTime()
        ED2.dispatchTimers()
    spent = (time.process_time() - started) / calls * 1e6
    print(f"{variant}: {spent:.1f} µs per call, heap {len(ED2.tlisteners)} entries at the end")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=("with", "without"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.calls)
        return 0
    for _ in range(args.runs):
        for variant in ("without", "with"):
            done = subprocess.run([sys.executable, __file__, "--child", variant, "--calls", str(args.calls)],
                                  check=True, capture_output=True, text=True)
            print(done.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
