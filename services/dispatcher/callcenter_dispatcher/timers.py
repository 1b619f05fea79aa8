"""The timer loop: fires due timers (wrap-up ends, offer leases) with the atomic fire_timers step.

Any number of dispatcher replicas run it; each due timer is removed and handled inside one Lua
step, so it fires exactly once whichever replica gets there first.
"""

from __future__ import annotations

import asyncio

import structlog

from callcenter.store import Store

log = structlog.get_logger(__name__)


async def run_timers(store: Store, stop: asyncio.Event, interval_ms: int, limit: int = 200) -> None:
    while not stop.is_set():
        try:
            fired = await store.fire_timers(limit=limit)
            if fired >= limit:
                continue  # a backlog: keep going without sleeping
        except (ConnectionError, OSError) as exc:
            log.warning("timers.redis_error", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_ms / 1000)
        except TimeoutError:
            pass
