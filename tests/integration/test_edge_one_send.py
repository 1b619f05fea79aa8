"""The report publisher's one-send MULTI ... EXEC (callcenter_sip_edge/transaction.py) on a real Redis.

The replies are EXEC's, as a pipeline's; an error reply is raised once every reply is read, so the
kept connection stays in step for the next batch; a batch takes no connection from the pool (the
same one serves every batch); a connection that Redis closed is opened again for the next batch.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from callcenter.contract.codec import decode
from callcenter.contract.reports import CallArrived
from callcenter.redis import connect
from callcenter.settings import EdgeSettings
from callcenter.store.keys import Keys
from callcenter.stream_read import quick_sends
from callcenter_dev.servers import RedisServer
from callcenter_sip_edge.checkpoint import Checkpoints
from callcenter_sip_edge.facts import Fact
from callcenter_sip_edge.publisher import ReportPublisher
from callcenter_sip_edge.service import EdgeService
from callcenter_sip_edge.transaction import OneSend, raise_errors

KEYS = Keys("one")


async def test_replies_and_errors_keep_the_connection_in_step(redis_server: RedisServer,
                                                              redis: aioredis.Redis) -> None:
    client = connect(redis_server.url)
    tx = OneSend(client)
    # the replies as Redis gives them
    assert await tx.execute([("SET", "k", "v"), ("INCR", "n"), ("HSET", "h", "f", 1)]) == [b"OK", 1, 1]
    # an error while EXEC runs (the other commands ran): in its place, the whole reply read
    reply = await tx.execute([("INCR", "n"), ("HSET", "k", "f", 1), ("INCR", "n")])
    assert reply[0::2] == [2, 3] and isinstance(reply[1], ResponseError) and "WRONGTYPE" in str(reply[1])
    raise_errors(reply, but=[1])
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        raise_errors(reply)
    assert await redis.get("n") == b"3"
    # a command refused when queued: nothing runs (EXECABORT), the error of the command is raised
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        await tx.execute([("INCR", "n"), ("HSET", "h")])
    assert await redis.get("n") == b"3"
    assert await tx.execute([("INCR", "n")]) == [4]
    await tx.close()
    await client.aclose()


async def test_a_publisher_keeps_one_connection_and_reconnects_after_a_drop(redis_server: RedisServer,
                                                                          redis: aioredis.Redis) -> None:
    client = connect(redis_server.url)
    publisher = ReportPublisher(client, KEYS, "e1", Checkpoints(client, KEYS, "e1"))
    assert publisher.one_send is not None
    for n in range(5):
        await publisher.publish([CallArrived(call_id=f"c{n}", edge="e1", seq=1, ts=1, flow="f", caller="ann",
                                             caller_uri="sip:ann@x", sip_call_id=f"c{n}@x", source="127.0.0.1:5")])
    pool = client.connection_pool
    assert len(pool._in_use_connections) == 1   # type: ignore[attr-defined]   # the kept one, not one per batch
    assert await redis.xlen(KEYS.reports) == 5
    await redis.client_kill_filter(skipme=True)   # every other client: the kept connection too
    await publisher.publish([CallArrived(call_id="c9", edge="e1", seq=1, ts=1, flow="f", caller="ann",
                                         caller_uri="sip:ann@x", sip_call_id="c9@x", source="127.0.0.1:5")])
    assert await redis.xlen(KEYS.reports) == 6   # once: the try on the dropped connection did not land
    assert await redis.hget(KEYS.dialog("c9"), "seq") == b"1"
    await client.aclose()


async def test_facts_delivered_to_an_idle_publisher_are_written_in_that_callback_in_order(
        redis_server: RedisServer, redis: aioredis.Redis) -> None:
    """The edge's kick (after each delivery of facts): an idle publisher's batch leaves in the
    delivering callback, not one loop iteration later in the task; what comes meanwhile waits
    behind it; the reports land once each, in the order of the facts."""
    client = connect(redis_server.url)
    quick_sends(client)
    service = EdgeService(EdgeSettings(edge_id="e1", tenant="one"), redis=client)
    task = asyncio.create_task(service._publish_reports())
    try:
        arrived = {"flow": "f", "caller": "100", "caller_uri": "sip:100@h", "sip_call_id": "s", "source": "h:5"}
        service.on_fact(Fact(kind="call_arrived", call_id="c1", data=arrived, ts_ms=1))
        service.kick()   # no kept connection yet: the task sends it, and keeps the connection
        await wait_for_reports(redis, 1)

        service.on_fact(Fact(kind="media_answered", call_id="c1", data={"purpose": "welcome", "uri": "sip:w@h"},
                             ts_ms=2))
        service.kick()
        sent_at_once = redis_has_reports(redis_server, 2)   # the loop has not run since the kick
        service.on_fact(Fact(kind="media_ended", call_id="c1", data={"purpose": "welcome"}, ts_ms=3))
        service.kick()   # a batch is in flight: this one waits for the task
        await wait_for_reports(redis, 3)
        assert sent_at_once
        entries = await redis.xrange(KEYS.reports)
        assert [decode(fields, eid.decode()).data["seq"] for eid, fields in entries] == [1, 2, 3]
        assert service.publisher.batches == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


def redis_has_reports(server: RedisServer, n: int) -> bool:
    """Whether Redis holds `n` reports within 2 s, asked by a blocking client of its own: the
    loop does not run meanwhile, so no task of this process can send anything."""
    sync = redis_sync.Redis(port=server.port)
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if sync.xlen(KEYS.reports) >= n:
                return True
            time.sleep(0.01)
        return False
    finally:
        sync.close()


async def wait_for_reports(redis: aioredis.Redis, n: int) -> None:
    for _ in range(200):
        if await redis.xlen(KEYS.reports) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {n} reports landed")
