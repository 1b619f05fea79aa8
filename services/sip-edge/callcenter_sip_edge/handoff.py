"""The batched hand-off of items from one thread to another (the SIP thread's facts to the asyncio
loop, the loop's commands to the SIP thread; see `sip_stack`).

Reads: items put by the producer thread. Writes: them, in order, to the consumer's callback, on
the consumer's thread (through the `wake` function given, e.g. `loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

# the longest a fact waits for the end of its reactor turn before it wakes the loop anyway
HOLD_MAX_S = 0.001


class Handoff:
    """Items passed from producer threads to one consumer thread in order, with at most one
    wake-up of the consumer outstanding: `put` schedules `wake(drain)` only when no drain is
    pending; the drain clears the flag before it empties the queue, so an item put meanwhile is
    either taken by this drain or schedules the next one.

    `hold()` ... `release()` (nested, on the one producer thread) keeps the wake-up for the end:
    the items put meanwhile wake the consumer once, at the outermost release, or at the first put
    `max_hold_s` after the first item held (a long turn does not keep a report from Redis)."""

    __slots__ = ("_consume", "_held", "_held_since", "_items", "_max_hold_s", "_pending", "_wake")

    def __init__(self, consume: Callable[[Any], None], wake: Callable[[Callable[[], None]], None],
                 max_hold_s: float = HOLD_MAX_S) -> None:
        self._items: deque[Any] = deque()
        self._pending = False
        self._held = 0
        self._held_since: float | None = None
        self._max_hold_s = max_hold_s
        self._consume = consume
        self._wake = wake

    def hold(self) -> None:
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        if not self._held and self._items:
            self._schedule()

    def put(self, item: Any) -> None:
        self._items.append(item)
        if not self._held:
            self._schedule()
        elif not self._pending:
            now = time.monotonic()
            if self._held_since is None:
                self._held_since = now
            elif now - self._held_since >= self._max_hold_s:
                self._schedule()

    def _schedule(self) -> None:
        self._held_since = None
        if not self._pending:
            self._pending = True
            try:
                self._wake(self.drain)
            except BaseException:
                self._pending = False
                raise

    def drain(self) -> None:
        self._pending = False
        items, consume = self._items, self._consume
        while items:
            consume(items.popleft())

    def __len__(self) -> int:
        return len(self._items)
