"""The reactor's turns: a piece of work (a call-from-thread callback, a pass over the due timers)
from its start to its end, with a hook around each.

Reads: sippy's reactor (ED2). Writes: wraps ED2's `dispatchThreadCallback` and `dispatchTimers`
on the singleton, once per process; the hooks of the running stack are set and cleared with it.

Why: the SIP thread hands facts to the asyncio loop (`sip_stack._Handoff`). Woken at the first fact
of a turn, the loop took the GIL at the SIP thread's next system call, published that one fact in a
Redis transaction of its own, and the two threads traded the GIL for every fact: at 100 calls/s
the edge ran 5.7 Redis transactions per call, with 2.2 reports in each. Held until the end of the
turn, the facts of a whole batch of datagrams wake the loop once and go to Redis together.

Knows sippy's private names (ED2's dispatch methods); nothing outside `callcenter_sip_edge.sippy`
does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

# (enter, leave) of the running stack, or None; read on the SIP thread at every turn
_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None
_installed = False
# run between two datagrams of a batch (the stack's queued commands), or None
_between: Callable[[], None] | None = None


def set_hooks(enter: Callable[[], None], leave: Callable[[], None]) -> None:
    """SIP thread: call `enter` before and `leave` after each turn of the reactor (nested turns,
    such as the timers a datagram batch runs at its end, call them nested: count the depth)."""
    global _hooks
    _install()
    _hooks = (enter, leave)


def clear_hooks() -> None:
    global _hooks, _between
    _hooks = None
    _between = None


def set_between(run: Callable[[], None]) -> None:
    """SIP thread: `run` is called between two datagrams of a batch (`between()`), so work handed
    to the reactor (a ring command) does not wait for the rest of a batch of up to 64 datagrams,
    several ms of parsing under load. Cleared with the hooks."""
    global _between
    _between = run


def between() -> None:
    """SIP thread, inside a datagram batch, after a datagram was handled."""
    run = _between
    if run is not None:
        run()


def _around(dispatch: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(dispatch)
    def turn(*args: Any) -> Any:
        hooks = _hooks
        if hooks is None:
            return dispatch(*args)
        enter, leave = hooks
        enter()
        try:
            return dispatch(*args)
        finally:
            leave()

    return turn


def _install() -> None:
    global _installed
    if _installed:
        return
    from sippy.Core.EventDispatcher import ED2

    # instance attributes over the class's methods: ED2.loop() and callFromThread() look them up
    # on the instance at each call
    ED2.dispatchThreadCallback = _around(ED2.dispatchThreadCallback)
    ED2.dispatchTimers = _around(ED2.dispatchTimers)
    _installed = True
