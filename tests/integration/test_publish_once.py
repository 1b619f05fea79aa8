"""The sip-edge's report batches are appended exactly once when EXEC ran but its reply was lost.

A real redis-server behind `ExecReplyCutter`, a TCP proxy that forwards a MULTI ... EXEC, lets
Redis run it, then drops the connection instead of relaying EXEC's reply: what a Redis restart
(AOF) or failover did to the edge in the clean-clone CI run whose reports read seq [1, 1, 2, 3, 4].
The control test shows the proxy reproduces that duplicate with a plain retry of the batch; the
publisher (marker key in the same MULTI, read before a retry) appends each report once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
import redis.asyncio as aioredis

from callcenter.contract.reports import CallArrived, MediaAnswered, Report
from callcenter.redis import REDIS_DOWN, connect
from callcenter.redis_durability import MARKER_TTL_S
from callcenter.store.keys import Keys
from callcenter.stream_read import quick_sends
from callcenter_dev.reply_cutter import ExecReplyCutter
from callcenter_dev.servers import RedisServer
from callcenter_sip_edge.checkpoint import Checkpoints
from callcenter_sip_edge.publisher import ReportPublisher, marker_key

EDGE = "edge-once"
KEYS = Keys("once")


def call_reports(call_id: str) -> list[Report]:
    return [CallArrived(call_id=call_id, edge=EDGE, seq=1, ts=1, flow="sales", caller="ann", caller_uri="sip:ann@x",
                        sip_call_id=f"{call_id}@x", source="127.0.0.1:5060"),
            MediaAnswered(call_id=call_id, edge=EDGE, seq=2, ts=2, purpose="queue", uri="sip:q@x")]


async def seqs(redis: aioredis.Redis) -> list[tuple[str, int]]:
    out = []
    for _id, fields in await redis.xrange(KEYS.reports):
        data = msgpack.unpackb(fields[b"data"])
        out.append((data["call_id"], data["seq"]))
    return out


@pytest.fixture
async def cutter(redis_server: RedisServer, redis: aioredis.Redis) -> AsyncIterator[ExecReplyCutter]:
    proxy = await ExecReplyCutter(redis_server.port).start()
    yield proxy
    await proxy.stop()


async def test_a_plain_retry_after_a_lost_exec_reply_appends_the_batch_twice(
        cutter: ExecReplyCutter, redis: aioredis.Redis) -> None:
    """The control: the proxy reproduces the CI failure for a publisher without the marker."""
    client = connect(cutter.url)
    cutter.arm()
    for _attempt in range(2):
        try:
            async with client.pipeline(transaction=True) as pipe:
                for report in call_reports("c1"):
                    pipe.xadd(KEYS.reports, report.to_fields())  # type: ignore[arg-type]
                await pipe.execute()
            break
        except REDIS_DOWN:
            continue
    assert cutter.cut == 1
    assert await seqs(redis) == [("c1", 1), ("c1", 2), ("c1", 1), ("c1", 2)]
    await client.aclose()


async def test_a_batch_whose_exec_reply_was_lost_is_not_appended_again(
        cutter: ExecReplyCutter, redis: aioredis.Redis) -> None:
    client = connect(cutter.url)
    publisher = ReportPublisher(client, KEYS, EDGE, Checkpoints(client, KEYS, EDGE))
    cutter.arm()
    await publisher.publish(call_reports("c1"))
    assert cutter.cut == 1
    assert await seqs(redis) == [("c1", 1), ("c1", 2)]
    assert publisher.landed_on_retry == 1
    # the call's checkpoint went in the same MULTI, once
    assert (await redis.hget(KEYS.dialog("c1"), "seq")) == b"2"

    # the next batches go on as usual, one marker key (this edge's) overwritten by each
    await publisher.publish(call_reports("c2"))
    cutter.arm()
    await publisher.publish(call_reports("c3"))
    assert cutter.cut == 2 and publisher.landed_on_retry == 2
    assert await seqs(redis) == [(c, n) for c in ("c1", "c2", "c3") for n in (1, 2)]
    marker = marker_key(KEYS, EDGE)
    assert (await redis.get(marker)) == f"{publisher.writer}:3".encode()
    assert 0 < await redis.ttl(marker) <= MARKER_TTL_S
    assert await redis.keys(f"{KEYS.prefix}edge:*:published") == [marker.encode()]
    await client.aclose()


async def test_a_batch_that_did_not_land_is_sent_again(cutter: ExecReplyCutter, redis: aioredis.Redis) -> None:
    """The connection dropped before EXEC reached Redis (nothing applied): the marker holds the
    previous batch's token, so the batch is sent again, and lands once."""
    client = connect(cutter.url)
    publisher = ReportPublisher(client, KEYS, EDGE, Checkpoints(client, KEYS, EDGE))
    await publisher.publish(call_reports("c1"))
    cutter.arm(before=True)
    await publisher.publish(call_reports("c2"))
    assert cutter.cut == 1
    assert publisher.landed_on_retry == 0
    assert await seqs(redis) == [(c, n) for c in ("c1", "c2") for n in (1, 2)]
    await client.aclose()


async def test_a_started_batch_is_written_in_the_callers_turn_and_lands_once_whatever_the_cut(
        cutter: ExecReplyCutter, redis: aioredis.Redis) -> None:
    """`start` (the edge's kick after a delivery of facts) writes the batch without awaiting: it is in
    Redis before `finish` runs; a lost EXEC reply or a cut before EXEC ends, through `finish`, with
    each report appended once, as `publish` does."""
    client = connect(cutter.url)
    quick_sends(client)
    publisher = ReportPublisher(client, KEYS, EDGE, Checkpoints(client, KEYS, EDGE))
    assert not publisher.can_start()             # no kept connection yet: the ordinary path connects it
    assert not publisher.start(call_reports("c0"))
    await publisher.publish(call_reports("c1"))
    assert publisher.can_start()

    assert publisher.start(call_reports("c2"))
    assert not publisher.can_start()             # one batch at a time
    await asyncio.sleep(0.2)                     # no task reads for it: only the write in start() sent it
    assert await seqs(redis) == [(c, n) for c in ("c1", "c2") for n in (1, 2)]
    await publisher.finish()
    assert publisher.can_start()

    cutter.arm()                                 # EXEC runs, its reply is lost
    assert publisher.start(call_reports("c3"))
    await publisher.finish()
    assert not publisher.start(call_reports("c4"))   # the cut dropped the kept connection:
    await publisher.publish(call_reports("c4"))      # the ordinary path connects it again
    cutter.arm(before=True)                      # the connection drops before EXEC reaches Redis
    assert publisher.start(call_reports("c5"))
    await publisher.finish()
    assert cutter.cut == 2 and publisher.landed_on_retry == 1
    assert await seqs(redis) == [(c, n) for c in ("c1", "c2", "c3", "c4", "c5") for n in (1, 2)]
    assert (await redis.get(marker_key(KEYS, EDGE))) == f"{publisher.writer}:5".encode()
    await client.aclose()
