"""sippy's reactor driven from the asyncio loop, on the loop's thread: no SIP thread, no watcher.

Reads: sippy's reactor (ED2: its timer heap `tlisteners`, `twasted`). Writes: ED2's `my_ident` and
`last_ts`; runs its due timers (`dispatchTimers`, with `timer_heap.py`'s clean-up); one
`loop.call_at` handle for the earliest live timer; the loop's readers of the stack's sockets.

sippy's objects call ED2 as they always do (`Timeout` -> `regTimer`, `EventListener.go()` pushes on
the heap, `cancel()`), but nobody calls `ED2.loop()`. Each piece of SIP work (a datagram batch, a
command, a timer, a batch of stream messages) runs through `turn()`, which runs the due timers after
it and arms the loop's timer handle for the heap's head when the head moved earlier. The head is
checked after each turn rather than on every `EventListener.go()`: every entry into sippy code goes
through a turn, and a wrapped go() would be one more Python call per timer started (several per
SIP message). Precision: the handle fires at the timer's time (asyncio's selector wait is rounded
up to the millisecond); sippy's own loop ticked at 100 Hz.

Why one thread: with a SIP thread, every fact crossed to the loop and every command back, every
datagram batch was handed from a watcher thread to the reactor (wake-ups, SIGURG, fights for the
GIL): at 100 calls/s most of the edge's CPU per call. Here a batch of datagrams is one loop
callback (`add_reader`, UDP_DRAIN_BATCH per callback, then back to the loop's FIFO of ready
callbacks), so a burst cannot starve the loop's Redis reads and they cannot starve it.

sippy is a process-wide singleton: one `LoopReactor` is open at a time (`current()`); `open()` binds
ED2 to the calling thread with an empty heap, `close()` drops the timers, the handle and the readers.

Knows sippy's private names (ED2's heap, `my_ident`, `last_ts`, `dispatchTimers`); nothing outside
`callcenter_sip_edge.sippy` does.
"""

from __future__ import annotations

import asyncio
import math
import select
import threading
import time
from collections.abc import Callable
from heapq import heappop
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# the longest `run_until` sleeps before it looks again (stop's flush of BYEs, without the loop)
PUMP_MAX_WAIT_S = 0.05

_current: LoopReactor | None = None


def current() -> LoopReactor:
    """The open reactor (the running stack's); RuntimeError if none."""
    if _current is None:
        raise RuntimeError("no SIP reactor is open in this process")
    return _current


def _nothing() -> None:
    pass


class LoopReactor:
    """sippy's reactor on `loop`'s thread. Call `open()` on that thread, `close()` when the stack ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ident = 0
        self._depth = 0
        self._closed = False
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._readers: dict[int, Callable[[], None]] = {}
        self._ed: Any = None
        # set by a socket reader whose batch ended with datagrams still waiting (a burst being read
        # in pieces), cleared by one that read its socket empty: the stack holds its facts meanwhile
        self.backlogged = False

    def open(self) -> None:
        """Bind sippy's reactor to this thread, with no timers left from an earlier stack."""
        global _current
        from sippy.Core.EventDispatcher import ED2

        if _current is not None and _current is not self:
            raise RuntimeError("another SIP reactor is open in this process (sippy has one)")
        self.ident = threading.get_ident()
        ED2.my_ident = self.ident
        ED2.tlisteners = []
        ED2.twasted = 0
        ED2.endloop = False
        self._ed = ED2
        _current = self

    @property
    def closed(self) -> bool:
        return self._closed

    def on_its_thread(self) -> bool:
        return threading.get_ident() == self.ident

    # -- pieces of work -------------------------------------------------------------------
    def turn(self, work: Callable[..., Any], *args: Any) -> None:
        """Run `work(*args)` (sippy code), then the timers that came due and the handle's re-arm.
        Nested turns run the timers once, at the outermost. Never raises: a failure is logged."""
        if self._closed:
            return
        self._depth += 1
        try:
            work(*args)
        except Exception:
            log.exception("sip.turn_failed", work=getattr(work, "__qualname__", repr(work)))
        finally:
            self._depth -= 1
            if not self._depth and not self._closed:
                self._after_turn()

    def _after_turn(self) -> None:
        from sippy.Time.MonoTime import MonoTime

        ed = self._ed
        ed.last_ts = MonoTime()
        try:
            ed.dispatchTimers()
        except Exception:
            log.exception("sip.timers_failed")
        self._arm()

    def _arm(self) -> None:
        """One loop handle for the earliest live timer, moved only when the heap's head is earlier
        than the time it is armed for (a later head lets it fire early once: a pass that finds
        nothing due re-arms it)."""
        heap = self._ed.tlisteners
        while heap and heap[0].cb_func is None:   # cancelled timers at the head (as dispatchTimers skips them)
            heappop(heap)
            self._ed.twasted -= 1
        if not heap:
            return
        when = heap[0].etime.monot
        if when >= self._armed_at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self.loop.call_at(when, self._timer_due)

    def _timer_due(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        self.turn(_nothing)

    # -- sockets --------------------------------------------------------------------------
    def add_reader(self, fd: int, drain: Callable[[], None]) -> None:
        """`drain()` (a bounded batch) as a turn whenever `fd` is readable."""
        self._readers[fd] = drain
        self.loop.add_reader(fd, self.turn, drain)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self.loop.remove_reader(fd)

    def from_any_thread(self, work: Callable[..., Any], *args: Any) -> None:
        """`work(*args)` as a turn on the loop's thread (at once if called there)."""
        if self.on_its_thread():
            self.turn(work, *args)
        else:
            self.loop.call_soon_threadsafe(self.turn, work, *args)

    # -- the end --------------------------------------------------------------------------
    def run_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """On the loop's thread while the loop itself waits (a synchronous stop): read the sockets
        and run the timers until `done()` or the timeout. Returns done()."""
        deadline = time.monotonic() + timeout_s
        while not done() and not self._closed:
            now = time.monotonic()
            if now >= deadline:
                break
            wait = min(deadline - now, PUMP_MAX_WAIT_S, max(0.0, self._armed_at - now))
            fds = list(self._readers)
            ready: list[int] = select.select(fds, [], [], wait)[0] if fds else []
            if not fds:
                time.sleep(wait)
            for fd in ready:
                drain = self._readers.get(fd)
                if drain is not None:
                    self.turn(drain)
            if time.monotonic() >= self._armed_at:
                if self._handle is not None:
                    self._handle.cancel()
                self._timer_due()
        return done()

    def close(self) -> None:
        """Drop the timer handle, the readers and sippy's timers; later turns do nothing."""
        global _current
        if self._closed:
            return
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for fd in list(self._readers):
            self.remove_reader(fd)
        if self._ed is not None:
            self._ed.tlisteners = []
            self._ed.twasted = 0
        if _current is self:
            _current = None
