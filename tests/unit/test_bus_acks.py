"""When the stream consumer acknowledges, and how it batches with `linger_ms` (issue 15), against a
real redis-server: the XACK rides with the next read yet reaches Redis before that read blocks; a
lingering consumer reads what came meanwhile as one batch; a stop cuts the linger short."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from callcenter.bus import ACK, StreamConsumer, Verdict
from callcenter.contract.codec import Entry
from callcenter_dev.producer import Producer

STREAM = "cc:{acks}:events"
DEAD = "cc:{acks}:dead"
GROUP = "g"


async def publish(redis: aioredis.Redis, agent_id: str) -> str:
    return await Producer(redis).publish(STREAM, "agent.logged_in", {"ts": 1, "agent_id": agent_id})


async def pending(redis: aioredis.Redis) -> int:
    return int((await redis.xpending(STREAM, GROUP))["pending"])


class Recorder:
    """A handler that acknowledges everything and keeps the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.seen = asyncio.Event()

    async def __call__(self, entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        self.batches.append([e.data["agent_id"] for e in entries])
        self.seen.set()
        return {e.id: ACK for e in entries}


def make(redis: aioredis.Redis, handler: Any, **kw: Any) -> StreamConsumer:
    return StreamConsumer(redis, stream=STREAM, group=GROUP, consumer="c1", handler=handler,
                          dead_stream=DEAD, **kw)


async def until(predicate: Any, within_s: float) -> float:
    """Wait for `predicate()` (async) to hold; returns the seconds it took."""
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < within_s, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_the_ack_reaches_redis_while_the_next_read_blocks(redis: aioredis.Redis) -> None:
    handler = Recorder()
    consumer = make(redis, handler, block_ms=5000)  # a long block: the ack must not wait for it
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(0.1)
        await publish(redis, "a1")
        await asyncio.wait_for(handler.seen.wait(), 3)

        async def acked() -> bool:
            return await pending(redis) == 0

        took = await until(acked, within_s=2.5)
        assert took < 2.5  # well under the 5 s block: sent with the read, before it blocks
        assert handler.batches == [["a1"]]
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 7)
    assert consumer.handled == 1 and await pending(redis) == 0


async def test_a_lingering_consumer_reads_what_came_meanwhile_as_one_batch(redis: aioredis.Redis) -> None:
    handler = Recorder()
    consumer = make(redis, handler, block_ms=2000, linger_ms=600, batch=50)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(0.1)
        await publish(redis, "first")
        await asyncio.wait_for(handler.seen.wait(), 3)
        # the consumer lingers now: these five arrive before its next read
        for i in range(5):
            await publish(redis, f"burst{i}")

        async def all_acked() -> bool:
            return consumer.handled == 6 and await pending(redis) == 0

        await until(all_acked, within_s=5)
        assert handler.batches == [["first"], [f"burst{i}" for i in range(5)]]
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 4)


async def test_a_full_batch_is_followed_by_a_read_at_once(redis: aioredis.Redis) -> None:
    """The linger is only for a read that found fewer than `batch` entries: a backlog is read
    batch after batch without pauses."""
    for i in range(9):
        await publish(redis, f"e{i}")
    handler = Recorder()
    consumer = make(redis, handler, block_ms=2000, linger_ms=3000, batch=3)
    started = time.monotonic()
    task = asyncio.create_task(consumer.run())
    try:
        async def all_seen() -> bool:
            return sum(len(b) for b in handler.batches) == 9

        await until(all_seen, within_s=2.5)
        assert time.monotonic() - started < 2.5  # no 3 s pause between the full batches
        assert [len(b) for b in handler.batches] == [3, 3, 3]
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 4)
    assert consumer.handled == 9 and await pending(redis) == 0


async def test_a_stop_cuts_the_linger_short_and_acks_the_batch_in_hand(redis: aioredis.Redis) -> None:
    handler = Recorder()
    consumer = make(redis, handler, block_ms=1000, linger_ms=5000)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.1)
    await publish(redis, "a1")
    await asyncio.wait_for(handler.seen.wait(), 3)
    await asyncio.sleep(0.1)  # lingering now, its ack not sent yet
    started = time.monotonic()
    consumer.request_stop()
    await asyncio.wait_for(task, 3)
    assert time.monotonic() - started < 1.0
    assert consumer.handled == 1 and await pending(redis) == 0


async def test_a_restart_reads_its_own_pending_entries_once_then_new_ones(redis: aioredis.Redis) -> None:
    """A consumer that died before its acknowledgements left entries pending under its name; at
    restart it reads them ("0"), and their XACK goes with the next "0" read, which then finds none
    and moves on: each entry is handled once, then the new ones."""
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(3):
        await publish(redis, f"old{i}")
    await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=10)  # delivered to c1, which then died
    assert await pending(redis) == 3
    handler = Recorder()
    consumer = make(redis, handler, block_ms=200)
    task = asyncio.create_task(consumer.run())
    try:
        await publish(redis, "new")

        async def all_acked() -> bool:
            return consumer.handled == 4 and await pending(redis) == 0

        await until(all_acked, within_s=5)
        assert handler.batches == [["old0", "old1", "old2"], ["new"]]
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 3)
