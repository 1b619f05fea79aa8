"""Log lines that outsiders can cause, limited per cause, with their values escaped and truncated.

Reads: nothing but its arguments (and a monotonic clock). Writes: structlog records.

Why: every malformed datagram, refused INVITE or sippy complaint is caused by whoever sends us
UDP. One record each let 12,000 bad datagrams write 12,000 WARNINGs (and sippy's raw output
forged records of its own). Here each cause (event + reason) gets at most `burst` records per
`window_s`; what is left out is counted and reported once by a `log.suppressed` line when the
window ends. String values are cut at `MAX_VALUE_CHARS` and their control characters escaped,
so a CR/LF or a JSON object inside a header stays inside one value of one record.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import structlog

MAX_VALUE_CHARS = 200
# causes tracked at once; past this the finished windows are flushed, then new causes share one
MAX_CAUSES = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clip(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """`value` cut to `limit` characters (the cut says how much was left out), controls escaped."""
    if len(value) > limit:
        value = f"{value[:limit]}...(+{len(value) - limit} chars)"
    if _CONTROL.search(value) is not None:
        value = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)
    return value


class _Window:
    __slots__ = ("logged", "started", "suppressed")

    def __init__(self, started: float) -> None:
        self.started = started
        self.logged = 0
        self.suppressed = 0


class RateLimitedLog:
    """At most `burst` records per cause per `window_s`; a summary of the rest when the window ends."""

    def __init__(self, logger: Any = None, *, burst: int = 5, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger if logger is not None else structlog.get_logger("callcenter_sip_edge.limited")
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def emit(self, level: str, event: str, cause: str, **fields: Any) -> bool:
        """Log `event` (fields escaped and clipped) unless its cause is over its limit; True if logged."""
        now = self._clock()
        key = (event, cause)
        if key not in self._windows and len(self._windows) >= MAX_CAUSES:
            self.flush()
            if len(self._windows) >= MAX_CAUSES:
                key = (event, "other")   # a flood of distinct causes shares one limit
        window = self._windows.get(key)
        if window is not None and now - window.started >= self.window_s:
            self._summarise(key, window)
            window = None
        if window is None:
            window = self._windows[key] = _Window(now)
        if window.logged >= self.burst:
            window.suppressed += 1
            return False
        window.logged += 1
        clean = {k: clip(v) if isinstance(v, str) else v for k, v in fields.items()}
        getattr(self._log, level)(event, **clean)
        return True

    def flush(self) -> None:
        """Report and forget every window that has ended (call it now and then, e.g. from a timer)."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now - window.started >= self.window_s:
                self._summarise(key, window)
                del self._windows[key]

    def _summarise(self, key: tuple[str, str], window: _Window) -> None:
        if window.suppressed:
            self._log.warning("log.suppressed", suppressed_event=key[0], cause=clip(key[1]),
                              suppressed=window.suppressed, window_s=self.window_s)
