"""The consumer's lean round trip (`callcenter.stream_read`, issue 15) against a real redis-server:
the XACK and the XREADGROUP go in one send and Redis answers both; the entries look as the
client's `xreadgroup` gives them; an error reply leaves the connection usable; a Redis that went
away is an error of the client's kind, counted, and the next read connects again. And the quick
sends of `QuickSendConnection` (and of its Unix-socket twin): a small send goes inline (no task of
its own), a large one keeps the client's timeout, and a reply Redis does not give is still bounded
by the socket timeout. The replies of one exchange are read under one timer, not one per reply,
and are still bounded. After a Sentinel failover the reader finds the new master."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from callcenter.metrics import REDIS_ERRORS, CountingRedis
from callcenter.redis import REDIS_DOWN, connect
from callcenter.stream_read import (
    KeptConnection,
    QuickSendConnection,
    QuickSendUnixConnection,
    StreamReader,
    quick_sends,
)
from callcenter_dev.redis_topologies import RedisSentinelServers
from callcenter_dev.servers import RedisServer

STREAM = "cc:{reader}:reports"
GROUP = "g"


async def test_ack_and_read_in_one_send_parse_as_the_client_does(redis: aioredis.Redis) -> None:
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ids = [(await redis.xadd(STREAM, {"type": "t", "n": str(n)})).decode() for n in range(3)]
    reader = StreamReader(redis, STREAM, GROUP, "c1")
    got = await reader.ack_and_read([], ">", 2, None)
    assert got == [[STREAM.encode(), [(ids[0].encode(), {b"type": b"t", b"n": b"0"}),
                                      (ids[1].encode(), {b"type": b"t", b"n": b"1"})]]]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 2
    # the acknowledgement goes first: a read of this consumer's own pending entries no longer finds them
    got = await reader.ack_and_read(ids[:2], "0", 10, None)
    assert got == [[STREAM.encode(), []]]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    # a blocking read returns what the client's read would: nothing after the block, then the entry
    started = time.monotonic()
    assert await reader.ack_and_read([], ">", 10, 100) == [[STREAM.encode(),
                                                          [(ids[2].encode(), {b"type": b"t", b"n": b"2"})]]]
    assert await reader.ack_and_read([ids[2]], ">", 10, 100) == []
    assert time.monotonic() - started >= 0.09
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    await reader.close()


async def test_an_error_reply_is_raised_and_the_connection_stays_in_step(redis: aioredis.Redis) -> None:
    reader = StreamReader(redis, STREAM, GROUP, "c1")
    with pytest.raises(ResponseError, match="NOGROUP"):
        await reader.ack_and_read(["1-0"], ">", 10, None)  # both commands answer NOGROUP
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry_id = await redis.xadd(STREAM, {"type": "t"})
    got = await reader.ack_and_read([], ">", 10, None)
    assert got[0][1][0][0] == entry_id  # the reply of this read, not a leftover of the last one
    await reader.close()


def _errors() -> float:
    return REDIS_ERRORS._value.get()  # the counter's current value


async def test_a_redis_that_went_away_is_counted_and_the_next_read_connects_again() -> None:
    server = RedisServer().start()
    client = CountingRedis.from_url(server.url)
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        reader = StreamReader(client, STREAM, GROUP, "c1")
        assert await reader.ack_and_read([], ">", 10, None) == []  # nothing yet (a nil reply)
        errors = _errors()
        port = server.port
        server.stop()
        with pytest.raises(REDIS_DOWN):
            await reader.ack_and_read([], ">", 10, None)
        assert _errors() == errors + 1
        server = RedisServer(port=port).start()
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        entry_id = await client.xadd(STREAM, {"type": "t"})
        got = await reader.ack_and_read([], ">", 10, None)
        assert got[0][1][0][0] == entry_id
        await reader.close()
    finally:
        await client.aclose()
        server.stop()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_quick_sends_go_inline_and_keep_the_timeout_for_large_ones(redis_server: RedisServer, transport: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    client = aioredis.Redis.from_url(redis_server.unix_url if transport == "unix" else redis_server.url)
    quick_sends(client)
    assert client.connection_pool.connection_class is {"tcp": QuickSendConnection,
                                                        "unix": QuickSendUnixConnection}[transport]
    timed: list[Any] = []
    real_wait_for = asyncio.wait_for

    async def wait_for(aw: Any, timeout: Any) -> Any:  # the client's timed path, observed
        timed.append(timeout)
        return await real_wait_for(aw, timeout)

    monkeypatch.setattr(asyncio, "wait_for", wait_for)
    try:
        await client.ping()  # connects; the first send goes the client's way
        await client.flushall()  # the server is the session's: the other transport's run left "n"
        timed.clear()
        assert await client.set("k", "v")
        async with client.pipeline(transaction=False) as pipe:
            pipe.get("k")
            pipe.incr("n")
            assert await pipe.execute() == [b"v", 1]
        assert timed == []  # small sends: no timer task
        conn = await client.connection_pool.get_connection()
        assert conn.socket_timeout == 5  # restored after each send
        await client.connection_pool.release(conn)
        big = b"x" * (256 * 1024)  # above the transport's high-water mark (64 KiB)
        assert await client.set("big", big)
        assert timed == [5]
        assert await client.strlen("big") == len(big)
    finally:
        await client.aclose()


async def test_a_reply_redis_does_not_give_is_bounded_by_the_socket_timeout() -> None:
    server = RedisServer().start()
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
    quick_sends(client)
    try:
        assert await client.ping()
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # paused: reads nothing, answers nothing
        try:
            started = time.monotonic()
            with pytest.raises(REDIS_DOWN):
                await client.get("k")
            assert 0.4 < time.monotonic() - started < 5
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await client.ping()
    finally:
        await client.aclose()
        server.stop()


async def test_the_replies_of_one_exchange_share_one_timer(redis: aioredis.Redis,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.asyncio.connection as connection_module

    per_reply: list[float] = []
    real_timeout = connection_module.async_timeout

    def counted(delay: float | None) -> Any:  # the client's per-read timer, observed
        per_reply.append(delay or 0)
        return real_timeout(delay)

    monkeypatch.setattr(connection_module, "async_timeout", counted)
    kept = KeptConnection(redis)
    conn = await kept.get()
    commands = [("SET", f"k{n}", n) for n in range(10)] + [("INCR", "k0"), ("GET", "k0"), ("LPUSH", "k1", "x")]
    replies = await kept.exchange(conn.pack_commands(commands), len(commands))
    assert replies[:10] == [b"OK"] * 10   # raw replies, as a pipeline reads them before its callbacks
    assert replies[10:12] == [1, b"1"]
    assert isinstance(replies[12], ResponseError)  # WRONGTYPE, read in its place; the others too
    assert per_reply == []
    assert await redis.get("k9") == b"9"   # the connection stayed in step
    await kept.close()


async def test_replies_redis_does_not_give_are_bounded_by_the_socket_timeout() -> None:
    server = RedisServer().start()
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
    try:
        kept = KeptConnection(client)
        conn = await kept.get()
        assert await kept.exchange(conn.pack_commands([("PING",)]), 1) == [b"PONG"]
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(REDIS_DOWN) as raised:
                await kept.exchange(conn.pack_commands([("PING",), ("PING",)]), 2)
            assert 0.4 < time.monotonic() - started < 5
            assert "Timeout" in str(raised.value)
            assert not conn.is_connected  # half-read: dropped
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await kept.exchange(conn.pack_commands([("PING",)]), 1) == [b"PONG"]  # connects again
        await kept.close()
    finally:
        await client.aclose()
        server.stop()


async def test_after_a_sentinel_failover_the_reader_reads_from_the_new_master(sentinel: RedisSentinelServers) -> None:
    """The reader's connection, dropped by the failover, connects again through the sentinels (as
    the pool would), not to the address it had: that is the old master, now a replica."""
    client = connect(sentinel.url)
    stream = "cc:{sentinel-reader}:reports"
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        reader = StreamReader(client, stream, GROUP, "c1")
        assert await reader.ack_and_read([], ">", 10, None) == []
        old, new = await asyncio.to_thread(sentinel.failover)
        assert old != new
        entry_id = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if entry_id is None:
                    entry_id = await client.xadd(stream, {"type": "t"})
                got = await reader.ack_and_read([], ">", 10, 100)
            except (*REDIS_DOWN, ResponseError):  # the failover under way: READONLY, UNBLOCKED, refused
                await asyncio.sleep(0.1)
                continue
            if got:
                break
        else:
            pytest.fail("the reader never read from the new master")
        assert got[0][1][0][0] == entry_id
        assert await reader.ack_and_read([entry_id.decode()], ">", 10, None) == []
        assert (await client.xpending(stream, GROUP))["pending"] == 0
        conn = reader._kept._conn  # the connection the reader keeps: on the new master
        assert conn is not None and conn.port == new
        await reader.close()
    finally:
        await client.aclose()
