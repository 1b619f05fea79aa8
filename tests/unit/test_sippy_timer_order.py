"""sippy's timer heap after the patch that compares the timers' monotonic floats directly
(patches._timers_ordered_by_their_float): the same order as sippy's own MonoTime comparison.

Run in a child process: importing sippy binds its reactor to the importing thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import heapq, random
    from callcenter_sip_edge.sippy import patches
    patches.apply_patches()
    from sippy.Core.EventDispatcher import EventListener
    from sippy.Time.MonoTime import MonoTime
    base = MonoTime()
    offsets = [random.uniform(-5.0, 60.0) for _ in range(500)] + [1.0, 1.0, 0.0]
    heap = []
    for offset in offsets:
        el = EventListener()
        el.etime = base.getOffsetCopy(offset)
        heapq.heappush(heap, el)
    popped = [heapq.heappop(heap).etime for _ in range(len(offsets))]
    assert all(not (b < a) for a, b in zip(popped, popped[1:])), "heap out of MonoTime order"
    got = [t.monot - base.monot for t in popped]
    assert all(abs(g - o) < 1e-6 for g, o in zip(got, sorted(offsets), strict=True)), "not the offsets in order"
    a, b = EventListener(), EventListener()
    a.etime, b.etime = base.getOffsetCopy(1.0), base.getOffsetCopy(2.0)
    assert (a < b, b < a, a < a) == (True, False, False)
    print("ok")
""")


def test_the_patched_timer_heap_pops_in_monotonic_order() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("\nok")   # after the log line of apply_patches
