"""The timer loop: fires due timers (wrap-up ends, offer leases, maximum wait, time on hold) with
the atomic fire_timers step; and the reconciler loop, which ends calls of unknown edges and calls
stalled in their state (with their CDR), frees agents no live call holds, and runs the stream
retention (`callcenter.retention`: reports, events and command streams trimmed only below what every
consumer group has acknowledged; nothing appends with a MAXLEN: an entry must never be trimmed
before it is read).

Any number of dispatcher replicas run it; each due timer is removed and handled inside one Lua
step, so it fires exactly once whichever replica gets there first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import ResponseError

from callcenter.redis import REDIS_DOWN, text
from callcenter.retention import stream_id, trim_streams
from callcenter.store import Store, now_ms

log = structlog.get_logger(__name__)


async def run_timers(store: Store, stop: asyncio.Event, interval_ms: int, limit: int = 200) -> None:
    while not stop.is_set():
        try:
            fired = await store.fire_timers(limit=limit)
            if fired >= limit:
                continue  # a backlog: keep going without sleeping
        except REDIS_DOWN as exc:
            log.warning("timers.redis_error", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_ms / 1000)
        except TimeoutError:
            pass


async def run_every(name: str, interval_ms: int, stop: asyncio.Event,
                    step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` every `interval_ms` until `stop`; a Redis outage is logged and waited out."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_ms / 1000)
        except TimeoutError:
            pass
        if stop.is_set():
            return
        try:
            await step()
        except REDIS_DOWN as exc:
            log.warning("loop.redis_error", loop=name, error=repr(exc))


async def trim_acknowledged(store: Store, group: str, keep_ms: int = 0, now: int | None = None) -> int:
    """Delete the reports the dispatchers' group has read and acknowledged (every entry before the
    oldest pending one, or before the last delivered one when none is pending) once they are older
    than `keep_ms` (kept that long to diagnose from). The number deleted."""
    stream = store.keys.reports
    try:
        groups = [g for g in await store.redis.xinfo_groups(stream) if text(g["name"]) == group]
    except ResponseError:  # no stream yet (a Redis that restarted empty): nothing to trim
        return 0
    if not groups:
        return 0
    pending = await store.redis.xpending(stream, group)
    keep_from = text(pending["min"]) if pending["pending"] else text(groups[0]["last-delivered-id"])
    oldest_kept = f"{(now_ms() if now is None else now) - keep_ms}-0"
    keep_from = min(keep_from, oldest_kept, key=stream_id)
    return int(await store.redis.xtrim(stream, minid=keep_from, approximate=False))


async def reconcile_once(store: Store, edge_lapse_ms: int, group: str, reports_keep_ms: int,
                         events_keep_ms: int = 600_000) -> None:
    done = await store.reconcile(edge_lapse_ms=edge_lapse_ms)
    if done.ended:
        log.warning("reconciler.ended_calls", count=done.ended)
    if done.released:
        log.warning("reconciler.released_agents", count=done.released)
    # every stream, every group (ours and analytics consumers'): the dispatcher runs wherever the
    # system runs (demo, CI, compose, k8s), so retention does not hang on the optional celery workers
    await trim_streams(store.redis, store.keys, now_ms(), reports_keep_ms, events_keep_ms)


async def lapse_registrations(store: Store) -> int:
    """One tick of the registrations' lapse timer (`registration_lapse.lua`): AORs whose last contact
    expired are forgotten and their logged-in agents paused with reason `unregistered`."""
    paused = await store.registration_lapse()
    if paused:
        log.info("registrations.lapsed", paused=paused)
    return paused
