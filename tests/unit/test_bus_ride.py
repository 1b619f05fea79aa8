"""A handler's commands ride with the consumer's acknowledgement and next read (issue 15: one
send per batch, `StreamReader.send_with_read` / `StreamConsumer.ride`), against a real
redis-server: the replies come back as a pipeline gives them, an error reply is that command's
alone, the read's reply is taken later, the batch is acknowledged with the next send (or soon by
a read of its own when nothing follows), and a stop handles what the last send read."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from callcenter.bus import ACK, StreamConsumer, Verdict
from callcenter.contract.codec import Entry, encode
from callcenter.stream_read import StreamReader
from callcenter_dev.producer import Producer

STREAM = "cc:{ride}:reports"
GROUP = "g"
COUNTER = "cc:{ride}:n"


async def test_send_with_read_answers_the_commands_then_the_read(redis: aioredis.Redis) -> None:
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    first = (await redis.xadd(STREAM, {"type": "t"})).decode()
    reader = StreamReader(redis, STREAM, GROUP, "c1")
    assert (await reader.ack_and_read([], ">", 10, None))[0][1][0][0].decode() == first
    second = (await redis.xadd(STREAM, {"type": "t"})).decode()
    replies = await reader.send_with_read([("INCRBY", COUNTER, 5), ("HGET", COUNTER, "x"), ("INCR", COUNTER)],
                                          [first], ">", 10, 100)
    assert replies[0] == 5 and isinstance(replies[1], ResponseError) and replies[2] == 6  # WRONGTYPE: its own
    assert reader.in_flight
    got = await reader.finish_read()
    assert not reader.in_flight
    assert [(i.decode(), f) for i, f in got[0][1]] == [(second, {b"type": b"t"})]
    assert [e["message_id"].decode() for e in await redis.xpending_range(STREAM, GROUP, "-", "+", 10)] == [second]
    # a read that finds nothing blocks up to its bound and answers as the client's read does
    await reader.send_with_read([("INCR", COUNTER)], [second], ">", 10, 50)
    assert await reader.finish_read() == []
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    await reader.close()


async def test_an_error_reply_of_the_read_is_raised_by_finish_read(redis: aioredis.Redis) -> None:
    reader = StreamReader(redis, STREAM, GROUP, "c1")  # no group: the read answers NOGROUP
    assert await reader.send_with_read([("INCR", COUNTER)], ["1-0"], ">", 10, None) == [1]
    with pytest.raises(ResponseError, match="NOGROUP"):
        await reader.finish_read()
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry_id = await redis.xadd(STREAM, {"type": "t"})
    assert (await reader.ack_and_read([], ">", 10, None))[0][1][0][0] == entry_id  # still in step
    await reader.close()


class Riding:
    """A handler that sends one INCR per batch through its consumer, as the dispatcher's FCALLs go."""

    def __init__(self) -> None:
        self.consumer: StreamConsumer | None = None
        self.batches: list[list[str]] = []
        self.rode: list[bool] = []

    async def __call__(self, entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        assert self.consumer is not None
        self.batches.append([e.id for e in entries])
        replies = await self.consumer.ride([("INCRBY", COUNTER, len(entries))])
        self.rode.append(replies is not None)
        if replies is None:
            await self.consumer.redis.incrby(COUNTER, len(entries))
        return {e.id: ACK for e in entries}


def consumer(redis: aioredis.Redis, handler: Riding, **kw: Any) -> StreamConsumer:
    c = StreamConsumer(redis, stream=STREAM, group=GROUP, consumer="c1", handler=handler,
                       dead_stream="cc:{ride}:dead", block_ms=1000, **kw)
    handler.consumer = c
    return c


async def until(predicate: Any, within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def publish(redis: aioredis.Redis, n: int) -> None:
    for i in range(n):
        await Producer(redis).publish(STREAM, "agent.logged_in", {"ts": 1, "agent_id": f"a{i}"})


async def test_one_send_per_batch_and_every_entry_acknowledged(redis: aioredis.Redis) -> None:
    handler = Riding()
    c = consumer(redis, handler)
    await c.ensure_group()
    task = asyncio.create_task(c.run())
    mon = aioredis.Redis(connection_pool=aioredis.ConnectionPool(**redis.connection_pool.connection_kwargs))
    seen: list[tuple[str, str]] = []
    async with mon.monitor() as m:
        for k in range(1, 6):  # batches one after another, each read while the last is in hand
            await publish(redis, 3)
            await until(lambda k=k: _handled(handler, 3 * k))  # type: ignore[misc]
        await until(lambda: _nothing_pending(redis), 2)
        await redis.echo("ride-done")
        while True:
            cmd = await m.next_command()
            if cmd["command"] == "ECHO ride-done":
                break
            seen.append((cmd["client_address"] + ":" + cmd["client_port"], cmd["command"].split(" ")[0]))
    await mon.aclose()
    c.request_stop()
    await asyncio.wait_for(task, 5)
    assert int(await redis.get(COUNTER) or 0) == 15
    assert any(handler.rode) and all(handler.rode[1:])  # every batch read after another rode
    # a ridden INCRBY is followed, from the same connection, by the read: one write
    rides = [i for i, (_, name) in enumerate(seen) if name == "INCRBY"]
    for i in rides:
        client = seen[i][0]
        after = [name for who, name in seen[i + 1:] if who == client]
        assert after[0] in ("XACK", "XREADGROUP"), after[:3]
        assert "XREADGROUP" in after[:2], after[:3]


async def _handled(handler: Riding, n: int) -> bool:
    return sum(len(b) for b in handler.batches) >= n


async def _nothing_pending(redis: aioredis.Redis) -> bool:
    return int((await redis.xpending(STREAM, GROUP))["pending"]) == 0


async def test_the_last_batch_is_acknowledged_soon_when_nothing_follows(redis: aioredis.Redis) -> None:
    handler = Riding()
    c = consumer(redis, handler)
    await c.ensure_group()
    task = asyncio.create_task(c.run())
    await publish(redis, 1)
    await until(lambda: _handled(handler, 1))
    await publish(redis, 2)  # read while the first is in hand, or with its acknowledgement
    await until(lambda: _handled(handler, 3))
    # nothing follows: the ridden read gives up after RIDE_BLOCK_MS and the acknowledgement goes
    # with a read of its own, well before the consumer's own 1 s block
    await until(lambda: _nothing_pending(redis), 0.5)
    c.request_stop()
    await asyncio.wait_for(task, 5)


async def test_a_stop_handles_what_the_last_send_read(redis: aioredis.Redis) -> None:
    handler = Riding()
    c = consumer(redis, handler)
    await c.ensure_group()

    original = handler.__call__

    async def stop_on_first(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        verdicts = await original(entries)
        if len(handler.batches) == 1:
            async with redis.pipeline(transaction=True) as pipe:  # both seen by the ridden read, in flight
                for agent_id in ("x", "y"):
                    pipe.xadd(STREAM, encode("agent.logged_in", {"ts": 1, "agent_id": agent_id}))  # type: ignore[arg-type]
                await pipe.execute()
            await asyncio.sleep(0.05)
            c.request_stop()
        return verdicts

    c.handler = stop_on_first
    await publish(redis, 1)
    await asyncio.wait_for(c.run(), 5)
    assert handler.rode == [True, False]  # the first batch rode; the second came at the stop
    assert sum(len(b) for b in handler.batches) == 3  # the entries the in-flight read took: handled
    assert int(await redis.get(COUNTER) or 0) == 3
    assert await _nothing_pending(redis)


def test_the_plain_packing_is_the_clients() -> None:
    from redis.asyncio.connection import Connection

    from callcenter.stream_read import _pack_plain
    fcall = ("FCALL", "cc_0123_report_call_arrived", 1, "cc:{t}:events", 1_764_000_000_000, "1-0", b"\x81\xa1a\x01")
    commands = [fcall, ("INCRBY", "ké", -3)]
    assert _pack_plain(commands, "utf-8") == b"".join(Connection().pack_commands(commands))
    assert _pack_plain([("SET", "k", 1.5)], "utf-8") is None  # a float: the client packs it


def test_pack_takes_the_plain_packing_and_falls_back_to_the_clients() -> None:
    """`pack` (the edge's report transactions and the dispatcher's batches) writes what the client
    would: its own packing for bytes, str and int, the client's for anything else."""
    from redis.asyncio.connection import Connection

    from callcenter.stream_read import pack
    conn = Connection()
    batch = [("MULTI",), ("SET", "cc:{t}:edge:e1:once", "tok", "EX", 300),
             ("XADD", "cc:{t}:reports", "*", "type", "report.call_ended", "v", 1, "data", b"\x81\xa1a\x01"),
             ("HSET", "cc:{t}:dialog:c1", "phase", "talking", "snapshot", '{"k": "é"}'), ("EXEC",)]
    assert pack(conn, batch) == [b"".join(conn.pack_commands(batch))]
    with_float = [*batch[:-1], ("ZADD", "cc:{t}:timers", 1.5, "x"), ("EXEC",)]
    assert b"".join(pack(conn, with_float)) == b"".join(conn.pack_commands(with_float))
