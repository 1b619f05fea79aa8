"""A StreamConsumer told which entry types it wants (`types`), against a real redis-server: the
others are acknowledged with the batch and never decoded, so a malformed entry of an unwanted type
costs nothing; an entry with no type at all is still dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis

from callcenter.bus import ACK, StreamConsumer, Verdict
from callcenter.contract.codec import Entry
from callcenter_dev.producer import Producer

STREAM = "cc:{bustypes}:events"
DEAD = "cc:{bustypes}:dead"
GROUP = "g"


async def test_unwanted_types_are_acknowledged_without_decoding(redis: aioredis.Redis) -> None:
    producer = Producer(redis)
    await producer.publish(STREAM, "agent.logged_out", {"ts": 1, "agent_id": "skipped"})
    wanted = await producer.publish(STREAM, "agent.logged_in", {"ts": 2, "agent_id": "a1"})
    # undecodable data, but of a type this consumer does not want: acknowledged, not dead-lettered
    await redis.xadd(STREAM, {"type": "agent.logged_out", "v": 1, "data": b"\xc1not msgpack"})
    await redis.xadd(STREAM, {"v": 1, "data": b"\x80"})  # no type: undecodable, dead-lettered
    seen: list[str] = []

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        seen.extend(e.id for e in entries)
        return {e.id: ACK for e in entries}

    consumer = StreamConsumer(redis, stream=STREAM, group=GROUP, consumer="c1", handler=handler,
                              dead_stream=DEAD, block_ms=30, types={"agent.logged_in"})
    task = asyncio.create_task(consumer.run())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while consumer.handled + consumer.dead_lettered < 4:
            assert asyncio.get_running_loop().time() < deadline, "the four entries were not settled"
            await asyncio.sleep(0.02)
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 5)
    assert seen == [wanted]
    assert (consumer.handled, consumer.dead_lettered) == (3, 1)
    assert int((await redis.xpending(STREAM, GROUP))["pending"]) == 0
    dead = await redis.xrange(DEAD)
    assert len(dead) == 1 and dead[0][1][b"error"].startswith(b"undecodable")
