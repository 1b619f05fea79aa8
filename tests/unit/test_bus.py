"""The stream consumer contract of callcenter.bus against a real redis-server: idempotent group
creation, dead-lettering after max deliveries, a failing handler, and a graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from callcenter.bus import ACK, RETRY, StreamConsumer, Verdict
from callcenter.contract.codec import Entry, encode
from callcenter_dev.producer import Producer
from callcenter_dev.servers import RedisServer

STREAM = "cc:{bus}:events"
DEAD = "cc:{bus}:dead"
GROUP = "g"


async def wait_for(predicate: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def publish(redis: aioredis.Redis, agent_id: str) -> str:
    return await Producer(redis).publish(STREAM, "agent.logged_in", {"ts": 1, "agent_id": agent_id})


async def pending(redis: aioredis.Redis) -> int:
    return int((await redis.xpending(STREAM, GROUP))["pending"])


def make(redis: aioredis.Redis, handler: Any, **kw: Any) -> StreamConsumer:
    return StreamConsumer(redis, stream=STREAM, group=GROUP, consumer=kw.pop("consumer", "c1"), handler=handler,
                          dead_stream=DEAD, block_ms=kw.pop("block_ms", 30), **kw)


async def test_group_creation_is_idempotent_and_reads_from_the_start(redis: aioredis.Redis) -> None:
    await publish(redis, "early")  # written before any consumer existed
    seen: list[str] = []

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        seen.extend(e.data["agent_id"] for e in entries)
        return {e.id: ACK for e in entries}

    consumer = make(redis, handler)
    await consumer.ensure_group()
    await consumer.ensure_group()
    task = asyncio.create_task(consumer.run())

    async def got_it() -> bool:
        return seen == ["early"]

    await wait_for(got_it)
    consumer.request_stop()
    await asyncio.wait_for(task, 2)
    assert await pending(redis) == 0 and consumer.handled == 1


async def test_retried_entry_is_dead_lettered_after_max_deliveries(redis: aioredis.Redis) -> None:
    calls = 0

    async def always_retry(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        nonlocal calls
        calls += 1
        return {e.id: RETRY for e in entries}

    entry_id = await publish(redis, "a1")
    consumer = make(redis, always_retry, claim_idle_ms=50, max_deliveries=2)
    task = asyncio.create_task(consumer.run())

    async def dead() -> bool:
        return await redis.xlen(DEAD) == 1

    await wait_for(dead)
    consumer.request_stop()
    await asyncio.wait_for(task, 2)
    (_, record), = await redis.xrange(DEAD)
    assert record[b"entry_id"].decode() == entry_id
    assert record[b"error"] == b"delivered more than 2 times"
    assert record[b"orig_type"] == b"agent.logged_in"
    assert calls == 2 and await pending(redis) == 0


async def test_an_entry_deleted_while_pending_is_logged_as_lost_and_cleared(redis: aioredis.Redis) -> None:
    kept, gone = await publish(redis, "kept"), await publish(redis, "gone")
    await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, "dead-consumer", {STREAM: ">"})  # both pending, never acked
    await redis.xdel(STREAM, gone)  # trimmed away while pending
    seen: list[str] = []

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        seen.extend(e.id for e in entries)
        return {e.id: ACK for e in entries}

    consumer = make(redis, handler, claim_idle_ms=50)
    with capture_logs() as logs:
        task = asyncio.create_task(consumer.run())

        async def cleared() -> bool:
            return await pending(redis) == 0

        await wait_for(cleared)
        consumer.request_stop()
        await asyncio.wait_for(task, 2)
    assert seen == [kept] and consumer.lost == 1
    [lost] = [line for line in logs if line["event"] == "consumer.entry_lost"]
    assert lost["entry_ids"] == [gone] and lost["log_level"] == "warning"


async def test_failing_handler_leaves_entries_pending_and_the_loop_goes_on(redis: aioredis.Redis) -> None:
    first = True

    async def flaky(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        nonlocal first
        if first:
            first = False
            raise RuntimeError("boom")
        return {e.id: ACK for e in entries}

    await publish(redis, "a1")
    consumer = make(redis, flaky, claim_idle_ms=50)
    task = asyncio.create_task(consumer.run())

    async def recovered() -> bool:
        return consumer.handled == 1 and await pending(redis) == 0

    await wait_for(recovered)
    consumer.request_stop()
    await asyncio.wait_for(task, 2)
    assert await redis.xlen(DEAD) == 0


async def test_stop_finishes_and_acks_the_batch_in_hand(redis: aioredis.Redis) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        started.set()
        await release.wait()
        return {e.id: ACK for e in entries}

    consumer = make(redis, slow, block_ms=1000)
    task = asyncio.create_task(consumer.run())
    await publish(redis, "a1")
    await asyncio.wait_for(started.wait(), 3)
    consumer.request_stop()  # what the SIGTERM handler does
    release.set()
    await asyncio.wait_for(task, 3)
    assert consumer.handled == 1 and await pending(redis) == 0


async def test_stop_while_idle_returns_within_one_block(redis: aioredis.Redis) -> None:
    async def never(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        raise AssertionError("no entries expected")

    consumer = make(redis, never, block_ms=100)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.05)
    consumer.request_stop()
    await asyncio.wait_for(task, 1)


async def test_consumer_loop_survives_a_redis_restart_with_persistence() -> None:
    server = RedisServer(appendonly=True).start()
    client = aioredis.Redis.from_url(server.url)

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        return {e.id: ACK for e in entries}

    consumer = make(client, handler)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(0.1)
        assert server.proc is not None
        server.proc.terminate()  # a restart that keeps the data (the workdir holds the AOF)
        server.proc.wait(5)
        server = RedisServer(port=server.port, appendonly=True, workdir=server.workdir).start()
        other = aioredis.Redis.from_url(server.url)
        await publish(other, "a1")
        await other.aclose()

        async def handled() -> bool:
            return consumer.handled == 1

        await wait_for(handled, within_s=3)
    finally:
        consumer.request_stop()
        await asyncio.wait([task], timeout=2)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the failure is the assertion above, not an asyncio warning
        await client.aclose()
        server.stop()


async def test_an_ack_lost_to_a_redis_restart_is_sent_when_redis_is_back() -> None:
    """The handler's effect is durable but Redis goes down before the XACK: once it is back the
    entry is acknowledged at once, not left pending until a reclaim (claim_idle_ms here: 60 s)."""
    server = RedisServer(appendonly=True).start()
    client = aioredis.Redis.from_url(server.url)
    handled = asyncio.Event()

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        if not handled.is_set():
            assert server.proc is not None
            server.proc.terminate()  # the effect is done; the acknowledgement will find Redis down
            server.proc.wait(5)
            handled.set()
        return {e.id: ACK for e in entries}

    await publish(client, "a1")
    consumer = make(client, handler, claim_idle_ms=60_000)
    task = asyncio.create_task(consumer.run())
    other: aioredis.Redis | None = None
    try:
        await asyncio.wait_for(handled.wait(), 3)
        await asyncio.sleep(0.3)  # the XACK has failed by now
        assert consumer.handled == 0
        server = RedisServer(port=server.port, appendonly=True, workdir=server.workdir).start()
        other = aioredis.Redis.from_url(server.url)

        async def acknowledged() -> bool:
            assert other is not None
            # counted when the reply comes: the XACK rides with the next (blocking) read
            return await pending(other) == 0 and consumer.handled == 1

        await wait_for(acknowledged, within_s=5)
    finally:
        consumer.request_stop()
        await asyncio.wait([task], timeout=2)
        if task.done() and not task.cancelled():
            task.exception()
        await client.aclose()
        if other is not None:
            await other.aclose()
        server.stop()


async def test_a_delivery_whose_reply_was_lost_is_read_again_once_redis_answers(
        redis_server: RedisServer, redis: aioredis.Redis) -> None:
    """Redis ran the consumer's read but the reply never reached it (the connection was cut, or a
    redis-server stopped between running the read and sending its reply): the entries are pending
    under the consumer's name. Once Redis answers again the consumer reads its own pending entries
    first, instead of leaving them for a reclaim (claim_idle_ms here: 60 s)."""
    victim = aioredis.Redis.from_url(redis_server.url, client_name="bus-victim")
    seen: list[str] = []

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        seen.extend(e.data["agent_id"] for e in entries)
        return {e.id: ACK for e in entries}

    consumer = make(victim, handler, claim_idle_ms=60_000)
    task = asyncio.create_task(consumer.run())
    try:
        await publish(redis, "before")

        async def idle() -> bool:
            return seen == ["before"] and await pending(redis) == 0

        await wait_for(idle)
        clients = await redis.client_list()
        ids = [c["id"] for c in clients if c.get("name") == "bus-victim"]
        assert ids, "the consumer's connections are named"
        async with redis.pipeline(transaction=True) as pipe:  # one step, as Redis saw it
            pipe.xadd(STREAM, encode("agent.logged_in", {"ts": 1, "agent_id": "lost"}))
            pipe.xreadgroup(GROUP, "c1", {STREAM: ">"})  # delivered to c1 ...
            for client_id in ids:  # ... whose connections go before any reply reaches it
                pipe.execute_command("CLIENT", "KILL", "ID", client_id)
            await pipe.execute()

        async def read_again() -> bool:
            return "lost" in seen and await pending(redis) == 0

        await wait_for(read_again, within_s=3)
        assert seen == ["before", "lost"]
    finally:
        consumer.request_stop()
        await asyncio.wait([task], timeout=2)
        await victim.aclose()


async def test_an_entry_kept_pending_is_offered_once_at_a_start_not_in_a_loop(redis: aioredis.Redis) -> None:
    """A previous process of this name left an entry pending that the handler keeps pending
    (RETRY: a parked report waits for its predecessor): the start offers it once and goes on to
    new entries, rather than reading it again and again before anything else."""
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    await publish(redis, "kept")
    await redis.xreadgroup(GROUP, "c1", {STREAM: ">"})  # pending under c1 from before the start
    offered: list[str] = []

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        offered.extend(e.data["agent_id"] for e in entries)
        return {e.id: RETRY if e.data["agent_id"] == "kept" else ACK for e in entries}

    consumer = make(redis, handler, claim_idle_ms=60_000)
    task = asyncio.create_task(consumer.run())
    try:
        await publish(redis, "new")

        async def new_handled() -> bool:
            return "new" in offered

        await wait_for(new_handled, within_s=3)
        assert offered == ["kept", "new"]
        assert await pending(redis) == 1  # the kept one, for a reclaim
    finally:
        consumer.request_stop()
        await asyncio.wait([task], timeout=2)


async def test_a_huge_bad_payload_is_logged_as_an_excerpt_with_its_size(redis: aioredis.Redis) -> None:
    """An 8 MB dead letter is one short log line, not an 8 MB one (issue 10 item 6)."""
    garbage = b"\x01" + b"a" * 8_000_000  # msgpack says ExtraData and its repr holds every byte
    await redis.xadd(STREAM, {"type": "agent.logged_in", "v": "1", "data": garbage})
    await redis.xadd(STREAM, {"type": "t" * 100_000, "v": "1", "data": b"\x80"})

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        return {e.id: ACK for e in entries}

    consumer = make(redis, handler)
    with capture_logs() as logs:
        task = asyncio.create_task(consumer.run())

        async def dead() -> bool:
            return await redis.xlen(DEAD) == 2

        await wait_for(dead)
        consumer.request_stop()
        await asyncio.wait_for(task, 5)
    lines = [line for line in logs if line["event"] == "consumer.dead_letter"]
    assert len(lines) == 2
    for line in lines:
        assert len(repr(line)) < 1000, repr(line)[:300]
        assert line["error"].startswith(("undecodable: agent.logged_in: data is not msgpack",
                                          "undecodable: unknown entry type"))
    assert lines[0]["payload_bytes"] >= 8_000_000 and lines[1]["payload_bytes"] >= 100_000
    for _, record in await redis.xrange(DEAD):
        assert len(record[b"error"]) <= 1000  # the reason is cut; the original fields are kept whole
    assert len((await redis.xrange(DEAD))[0][1][b"orig_data"]) == len(garbage)
