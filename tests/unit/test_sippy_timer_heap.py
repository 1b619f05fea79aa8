"""sippy's timer heap after `timer_heap` (issue 15): the due-timer pass drops the cancelled timers
once they are more than half of a large heap, as sippy's own loop() does, and loses no live timer:
every due one fires, in time order, and the rest stay in heap order.

Run in a child process: importing sippy binds its reactor to the importing thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import heapq, random
    from callcenter_sip_edge.sippy import patches, timer_heap
    patches.apply_patches()
    from sippy.Core.EventDispatcher import ED2
    from sippy.Time.MonoTime import MonoTime
    from sippy.Time.Timeout import Timeout

    fired = []
    random.seed(15)
    timers = [Timeout(fired.append, random.choice((0.0, 5.0, 32.0, 300.0)) + random.random() / 1000, 1, n)
              for n in range(3000)]
    cancelled = set(random.sample(range(3000), 2000))
    for n in cancelled:
        timers[n].cancel()
    assert len(ED2.tlisteners) == 3000 and ED2.twasted == 2000, (len(ED2.tlisteners), ED2.twasted)
    ED2.last_ts = MonoTime()
    ED2.dispatchTimers()
    live = [n for n in range(3000) if n not in cancelled]
    due = [n for n in live if timers[n].ival < 1.0]
    assert sorted(fired) == due, (len(fired), len(due))
    assert [timers[n].etime.monot for n in fired] == sorted(timers[n].etime.monot for n in fired)
    rest = sorted(ED2.tlisteners, key=lambda el: el.etime.monot)
    assert [el.cb_params[0] for el in rest] == sorted((n for n in live if n not in due),
                                                     key=lambda n: timers[n].etime.monot)
    assert ED2.twasted == 0 and len(ED2.tlisteners) == len(live) - len(due)
    popped = [heapq.heappop(ED2.tlisteners).etime.monot for _ in range(len(ED2.tlisteners))]
    assert popped == sorted(popped)
    # a small heap is left as it is
    small = [Timeout(fired.append, 60.0, 1, n) for n in range(10)]
    for el in small[2:]:   # the two due first stay live: nothing is popped
        el.cancel()
    ED2.dispatchTimers()
    assert len(ED2.tlisteners) == 10 and ED2.twasted == 8
    print("ok", len(due), len(rest))
""")


def test_the_due_timer_pass_drops_cancelled_timers_and_keeps_the_rest() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("ok ")
