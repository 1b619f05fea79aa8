"""sippy's timer heap cleared of its cancelled timers on every pass of the due timers, not only in a
reactor loop turn that may not come under load (issue 15: the edge's Python per SIP message).

Reads: the sippy package (imported lazily). Writes: wraps
EventDispatcher2.dispatchTimers, once per process, from `patches.apply_patches()`.

Why: a cancelled sippy timer stays in the heap (its callback cleared) until its time comes: the
32 s timer B of every request sent, the INVITE server transaction's expiry (300 s), the ring and
session timers; most timers are cancelled. sippy's own loop() drops them once they are more than
half the heap, but that code runs only when ElPeriodic's procrastinate() returns, which it does
not while call-from-thread callbacks keep arriving (`transport.run_due_timers` runs the due timers
after each datagram batch for that reason): under load the heap kept every cancelled timer, and
each timer started or fired sifts through it (a Python comparison per level), and each cancelled
one is popped on its own when its time comes. Here the same clean-up (the same condition, the same
result: the live timers, in heap order, none lost) runs before the due timers are dispatched.
"""

from __future__ import annotations

from heapq import heapify
from typing import Any

# below this many entries the heap is cheap whatever it holds: not worth a pass
MIN_HEAP_TO_CLEAR = 512
ORIGINALS: dict[str, Any] = {}


def apply() -> None:
    """Wrap the dispatcher's due-timer pass. Call once, from `apply_patches()`."""
    from sippy.Core.EventDispatcher import EventDispatcher2

    original = ORIGINALS["EventDispatcher2.dispatchTimers"] = EventDispatcher2.dispatchTimers

    def dispatch_timers(self: Any) -> Any:
        heap = self.tlisteners
        if len(heap) >= MIN_HEAP_TO_CLEAR and self.twasted * 2 > len(heap):
            live = [el for el in heap if el.cb_func is not None]
            heapify(live)
            heap[:] = live   # in place: the list EventListener.go() pushes to stays the same object
            self.twasted = 0
        return original(self)

    EventDispatcher2.dispatchTimers = dispatch_timers
