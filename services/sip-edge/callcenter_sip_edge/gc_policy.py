"""When the edge collects reference cycles: automatic collection off, `CycleCollector` decides.

Reads: the number of active calls (given by the router every few seconds) and a clock.
Writes: runs `gc.collect()`, freezes the start-up heap (`tune_gc`), logs `sip.gc_collected`.
Nothing here knows sippy; the measurements behind the policy are in `tune_gc`'s docstring.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


def tune_gc() -> None:
    """Move everything built at start-up out of the collector's reach and stop automatic collections;
    `CycleCollector` collects when the edge is idle and at least every `GC_MAX_INTERVAL_S`.

    Why: sippy makes many small objects per message and keeps a call's dialogs ~32 s after it ends,
    so the live heap is large (~1.2 million tracked objects at 150 calls/s) and every collection
    walks a big share of it. With the thresholds used before (50,000, 20, 100) young collections
    took 20-240 ms and the middle generation up to 650 ms, about 14 % of the edge's CPU and the
    pauses behind the retransmissions seen at 150 calls/s. Reference counting frees almost
    everything: once `_no_reference_cycle_per_request` removed the one cycle sippy made per
    request, a full collection after 90 s at 150 calls/s found ~100 cyclic objects (start-up
    leftovers), so automatic collections only cost time. sippy's UAs break their own cycles when
    they die (UaStateDead).
    """
    gc.collect()
    gc.freeze()
    gc.disable()


# a collection when no call has been up for this long (the dialogs of the last call are gone)
GC_IDLE_AFTER_S = 40.0
# ... and at the latest this long after the previous one, whatever the load (a safety net for
# reference cycles in paths the benchmark does not take; its pause grows with the live heap)
GC_MAX_INTERVAL_S = 900.0


class CycleCollector:
    """Decides when the edge runs the cycle collector (automatic collection is off, see
    `tune_gc`): `tick(active_calls)` every few seconds collects once the edge has been idle for
    `idle_after_s` (once per idle period), or when `max_interval_s` has passed since the last
    collection. Logs what each collection found; a growing count means a new reference cycle."""

    def __init__(self, *, idle_after_s: float = GC_IDLE_AFTER_S, max_interval_s: float = GC_MAX_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, collect: Callable[[], int] = gc.collect) -> None:
        self.idle_after_s = idle_after_s
        self.max_interval_s = max_interval_s
        self._clock = clock
        self._collect = collect
        now = clock()
        self._last_collection = now
        self._last_busy = now
        self._collected_since_busy = True   # nothing to collect before the first call

    def tick(self, active_calls: int) -> int | None:
        """The number of unreachable objects found, or None if no collection ran."""
        now = self._clock()
        if active_calls:
            self._last_busy = now
            self._collected_since_busy = False
        idle = not active_calls and not self._collected_since_busy and now - self._last_busy >= self.idle_after_s
        if not idle and now - self._last_collection < self.max_interval_s:
            return None
        started = time.perf_counter()
        found = self._collect()
        self._last_collection = self._clock()
        self._collected_since_busy = self._collected_since_busy or not active_calls
        log.info("sip.gc_collected", unreachable=found, ms=round((time.perf_counter() - started) * 1000, 1),
                 idle=idle, active_calls=active_calls)
        return found


