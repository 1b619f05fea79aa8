"""The dispatcher's timer loop against a real redis-server (issue 15): with nothing due it sleeps a
whole interval in a BLPOP on the wake-up list, not polling; a step that adds a timer due sooner
wakes it, and the timer fires when due, well before that interval is over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgpack
import pytest
import redis.asyncio as aioredis

from callcenter.store import RC, Store, now_ms
from callcenter_dispatcher.timers import run_timers

INTERVAL_MS = 120_000   # far longer than any wait below: only a wake-up can make the loop look again


async def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def blocked_on_wake(redis: aioredis.Redis) -> bool:
    return any(c.get("cmd") == "blpop" for c in await redis.client_list())


@pytest.fixture
async def store(redis: aioredis.Redis) -> AsyncIterator[Store]:
    store = Store(redis, "timerloop")
    await redis.hset(store.keys.config, mapping={"reject_on_no_agents": 0})
    await store.flow_upsert("support", {"skill": "s", "priority": 1, "queue_uri": "sip:q@127.0.0.1:9",
                                        "max_wait_s": 1})
    yield store


async def test_a_timer_added_while_the_loop_sleeps_fires_when_due(redis: aioredis.Redis, store: Store) -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(run_timers(store, stop, INTERVAL_MS, wait_max_s=INTERVAL_MS / 1000))
    try:
        await wait_for(lambda: blocked_on_wake(redis))   # its first pass found nothing: asleep
        # a call with nobody logged in waits in the queue; its maximum wait is a timer due in 1 s
        arrived = now_ms()
        data = msgpack.packb({"call_id": "c1", "edge": "edge-a", "seq": 1, "ts": arrived, "flow": "support",
                              "caller": "bob", "caller_uri": "sip:bob@127.0.0.1", "sip_call_id": "c1",
                              "source": "127.0.0.1:5"})
        res = await store.apply_report("report.call_arrived", "1-1", data, now=arrived)
        assert res.rc is RC.OK and res.detail == "queued"
        assert await redis.zscore(store.keys.timers, "maxwait|c1") == arrived + 1000

        async def fired() -> bool:
            return await redis.zscore(store.keys.timers, "maxwait|c1") is None

        await wait_for(fired)
        assert now_ms() >= arrived + 1000   # not before it was due
        # and asleep again, with the wake-up spent
        await wait_for(lambda: blocked_on_wake(redis))
        assert await redis.llen(store.keys.timer_wake) == 0
    finally:
        stop.set()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
