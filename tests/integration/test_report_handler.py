"""The dispatcher's report handler: one pipeline per batch, in stream order, on a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import redis.asyncio as aioredis

from callcenter.bus import Outcome, StreamConsumer
from callcenter.contract.codec import Entry, encode
from callcenter.store import Store
from callcenter_dispatcher.handler import ReportHandler

TENANT = "handler"
EDGE = "edge-h"


def entry(n: int, rtype: str, call_id: str, seq: int, **data: Any) -> Entry:
    return Entry(type=rtype, v=1, data={"call_id": call_id, "edge": EDGE, "seq": seq, "ts": 1, **data}, id=f"1-{n}")


def arrival(n: int, call_id: str) -> Entry:
    return entry(n, "report.call_arrived", call_id, 1, flow="support", caller="bob", caller_uri="sip:bob@127.0.0.1",
                 sip_call_id=call_id, source="127.0.0.1:5")


async def provision(redis: aioredis.Redis) -> Store:
    store = Store(redis, TENANT)
    await store.flow_upsert("support", {"skill": "s", "priority": 1, "queue_uri": "sip:q@127.0.0.1:9"})
    for agent_id in ("a1", "a2"):
        await store.agent_upsert(agent_id, f"sip:{agent_id}@127.0.0.1:9", ["s"], 0)
        await store.agent_login(agent_id)
    return store


async def test_a_batch_keeps_each_calls_order_and_survives_a_lost_library(redis: aioredis.Redis) -> None:
    store = await provision(redis)
    handler = ReportHandler(store)
    batch = [arrival(1, "c1"), arrival(2, "c2"),
             entry(3, "report.agent_answered", "c1", 2, offer_id="1", agent_id="a1"),
             entry(4, "report.call_ended", "c1", 3, by="caller", reason="bye"),
             entry(5, "report.call_ended", "c2", 2, by="caller", reason="cancel"),
             Entry(type="call.queued", v=1, data={}, id="1-6")]
    await redis.function_flush()  # Redis lost the function library (a restart): the batch loads it and runs
    verdicts = await handler(batch)
    assert [verdicts[e.id].outcome for e in batch] == [Outcome.ACK] * 5 + [Outcome.DEAD]
    c1, c2 = await store.call("c1"), await store.call("c2")
    assert c1 is not None and (c1["state"], c1["outcome"], c1["agent"]) == ("ended", "answered", "a1")
    assert c2 is not None and (c2["state"], c2["outcome"]) == ("ended", "abandoned")
    assert handler.applied["OK"] == 5

    # the same batch again (a redelivery): every report is a duplicate, nothing changes
    events = await redis.xlen(store.keys.events)
    verdicts = await handler(batch[:5])
    assert all(v.outcome is Outcome.ACK for v in verdicts.values())
    assert await redis.xlen(store.keys.events) == events
    assert handler.applied["DUPLICATE"] == 5


async def test_lua_gets_the_data_bytes_as_read_from_the_stream(redis: aioredis.Redis) -> None:
    store = await provision(redis)
    read = arrival(1, "c9")
    # `data` cut down to what the handler itself reads: were it packed again, Lua would refuse it
    forwarded = Entry(type=read.type, v=1, data={"call_id": "c9"}, id=read.id, raw=msgpack.packb(read.data))
    verdicts = await ReportHandler(store)([forwarded])
    assert verdicts[read.id].outcome is Outcome.ACK
    call = await store.call("c9")
    assert call is not None and call["flow"] == "support"


async def test_a_report_ahead_of_its_predecessor_is_retried_then_left_pending(redis: aioredis.Redis) -> None:
    store = await provision(redis)
    handler = ReportHandler(store)
    # c3's arrival is not here (held by another replica): its next two reports wait; c4 goes on
    batch = [entry(1, "report.agent_answered", "c3", 2, offer_id="1", agent_id="a1"), arrival(2, "c4"),
             entry(3, "report.call_ended", "c3", 3, by="caller", reason="bye")]
    verdicts = await handler(batch)
    assert (verdicts["1-1"].outcome, verdicts["1-2"].outcome, verdicts["1-3"].outcome) == \
        (Outcome.RETRY, Outcome.ACK, Outcome.RETRY)
    assert await store.call("c3") is None
    c4 = await store.call("c4")
    # applied: the caller waits on the queue media until it is on it (then an agent is offered)
    assert c4 is not None and (c4["state"], c4["media"]) == ("queued", "queue")


async def test_a_failing_step_does_not_hold_up_the_batch_and_is_dead_lettered_with_its_reason(
        redis: aioredis.Redis) -> None:
    """Issue 10, item 2: a script error was raised for the whole batch (every report left pending);
    now it is that report's verdict alone, retried while its fault may be mended, then dead."""
    store = await provision(redis)
    handler = ReportHandler(store, max_failures=3)
    await redis.set(store.keys.commands("edge-bad"), "not a stream")  # the edge of c1 only
    bad = Entry(type="report.call_arrived", v=1, id="1-1",
                data={**arrival(1, "c1").data, "edge": "edge-bad"})
    batch = [bad, arrival(2, "c2"), entry(3, "report.call_ended", "c1", 2, by="caller", reason="bye")]
    verdicts = await handler(batch)
    assert [verdicts[e.id].outcome for e in batch] == [Outcome.RETRY, Outcome.ACK, Outcome.RETRY]
    assert await store.call("c1") is None  # the preflight found the fault: nothing written
    c2 = await store.call("c2")
    # applied: the caller waits on the queue media until it is on it (then an agent is offered)
    assert c2 is not None and (c2["state"], c2["media"]) == ("queued", "queue")
    assert (await handler([bad]))[bad.id].outcome is Outcome.RETRY
    last = (await handler([bad]))[bad.id]
    assert last.outcome is Outcome.DEAD
    assert last.reason.startswith("step failed: preflight: ") and "not a stream" in last.reason


async def test_the_consumer_dead_letters_a_failing_report_with_the_lua_error(redis: aioredis.Redis) -> None:
    """Through the stream consumer: a report whose step fails half-way ends in the dead-letter
    stream with the step's reason, after at most max_deliveries; the other reports go on."""
    store = await provision(redis)
    await redis.set(store.keys.flow_stats("support"), "not a hash")  # hit after the first writes
    for e in (arrival(1, "c1"), arrival(2, "c2")):
        data = e.data if e.data["call_id"] == "c1" else {**e.data, "flow": "other"}
        await redis.xadd(store.keys.reports, encode(e.type, data))
    consumer = StreamConsumer(redis, stream=store.keys.reports, group="dispatchers", consumer="d1",
                              handler=ReportHandler(store, max_failures=3), dead_stream=store.keys.dead,
                              block_ms=20, claim_idle_ms=40, max_deliveries=5)
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(500):  # a bounded wait for the outcome
            if await redis.xlen(store.keys.dead):
                break
            await asyncio.sleep(0.02)
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 5)
    (_, dead), = await redis.xrange(store.keys.dead)
    reason = dead[b"error"].decode()
    assert reason.startswith("step failed: ") and "WRONGTYPE" in reason, reason
    assert msgpack.unpackb(dead[b"orig_data"])["call_id"] == "c1"
    c2 = await store.call("c2")
    assert c2 is not None and c2["state"] == "ended" and c2["outcome"] == "rejected"  # unknown flow
    assert int((await redis.xpending(store.keys.reports, "dispatchers"))["pending"]) == 0
