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

# the longest single BLPOP of the timer loop (a longer CC_TIMER_INTERVAL_MS makes several)
WAKE_WAIT_MAX_S = 2.0
# how late Redis may end a BLPOP: it checks blocked clients' timeouts on its cron, every 1/hz s
# (hz 10 by default); measured 0-106 ms late on an idle redis-server
REDIS_TICK_S = 0.1


async def run_timers(store: Store, stop: asyncio.Event, interval_ms: int, limit: int = 200,
                     wait_max_s: float = WAKE_WAIT_MAX_S) -> None:
    """Fire due timers until `stop`. Between two passes the loop sleeps until the first timer left
    is due (fire_timers.lua reads it in the same step and writes the loop's wake-up time to
    `cc:{t}:timer_sleep`), `interval_ms` at most, in a BLPOP on `cc:{t}:timer_wake`: a step that
    adds a timer due before that time pushes there (Lua `add_timer`), so the loop wakes for it at
    once. With nothing due it makes one pass per `interval_ms` (a safety net: a wake-up taken by a
    replica that died before its pass, a timer added by an older library), not one per tick; a Redis
    error is waited out for `interval_ms`."""
    interval_s = interval_ms / 1000
    sleep_max_ms = int(min(interval_s, wait_max_s) * 1000)
    while not stop.is_set():
        pause_s = sleep_max_ms / 1000
        try:
            fired, first_due = await store.fire_timers_next(limit=limit, sleep_max_ms=sleep_max_ms)
            if fired >= limit:
                continue  # a backlog: keep going without sleeping
            if first_due is not None:
                pause_s = min(pause_s, (first_due - now_ms()) / 1000)
            if pause_s > REDIS_TICK_S:
                # Redis ends a BLPOP on its cron tick, up to a tick late: it is asked to end a tick
                # before the timer is due, and the rest is slept here (bounded well under the
                # client's socket timeout)
                await _wait_for_wake(store, stop, min(pause_s - REDIS_TICK_S, wait_max_s))
            elif pause_s > 0:
                await asyncio.sleep(pause_s)
            continue
        except REDIS_DOWN as exc:
            log.warning("timers.redis_error", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass


async def _wait_for_wake(store: Store, stop: asyncio.Event, pause_s: float) -> None:
    """Up to `pause_s` in a BLPOP on the wake-up list; its timeout is in Redis, at least a
    millisecond (0 would be for ever). An error reply (UNBLOCKED: the master became a replica in a
    failover; a wake-up key of the wrong type) makes it a plain sleep: the timers are in their zset
    whatever happens to the wake-up."""
    try:
        await store.redis.blpop([store.keys.timer_wake], timeout=max(0.001, pause_s))
    except ResponseError as exc:
        log.warning("timers.wake_wait_failed", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), timeout=pause_s)
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
