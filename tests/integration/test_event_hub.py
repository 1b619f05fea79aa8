"""The api's event feed reader (`callcenter_api.feed.EventHub`) on a real redis-server: fan-out from
one reader, the seam between backlog and live entries, and a slow subscriber dropped, not buffered."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from callcenter.contract.codec import encode
from callcenter.store.keys import Keys
from callcenter_api.feed import DROPPED, EventHub

STREAM = Keys("hub").events


async def add(redis: aioredis.Redis, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        eid = await redis.xadd(STREAM, encode("agent.logged_in", {"ts": i, "agent_id": f"a{i}"}))
        ids.append(eid.decode())
    return ids


async def test_subscribers_get_every_entry_after_their_head_and_a_slow_one_is_dropped(redis: aioredis.Redis) -> None:
    before = await add(redis, 3)
    hub = EventHub(redis, STREAM, block_ms=50)
    try:
        fast, head = await hub.subscribe(buffer=100)
        slow, _ = await hub.subscribe(buffer=10)
        assert head == before[-1]
        assert [e.id async for e in hub.backlog(before[0], head)] == before[1:]
        live = await add(redis, 30, start=3)
        got: list[str] = []
        while len(got) < 30:
            item = await asyncio.wait_for(fast.queue.get(), 5)
            assert item is not DROPPED
            got.append(item.id)
        assert got == live
        # the slow one never read: it holds nothing but the end mark, and is told so once
        assert slow.dropped and slow.queue.qsize() == 1 and slow.queue.get_nowait() is DROPPED
        hub.unsubscribe(fast)
        hub.unsubscribe(slow)
        await asyncio.sleep(0.2)  # the reader stops with no subscriber left (one blocking read at most)
        assert hub._task is not None and hub._task.done()
    finally:
        await hub.close()
