"""Out-of-order reports in a running dispatcher (real redis-server): parked, never waited for.

A report for a call nobody knows, and a report whose predecessor comes late, must not hold up the
other calls: real calls are rung at once while they are parked; the late one is applied as soon as
its predecessor is, the orphan is dead-lettered with its reason after the bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from test_dispatcher import EDGE, arrival, report, wait_for

from callcenter.contract.codec import decode
from callcenter.settings import DispatcherSettings
from callcenter.store import Store
from callcenter_dev.producer import Producer
from callcenter_dev.servers import RedisServer
from callcenter_dispatcher.main import run

TENANT = "parked"
AGENTS = 4
# Before parking, one out-of-order report held the consumer loop for its retry ladder (~1.9 s).
# A real call is rung in milliseconds; this bound leaves room for a loaded machine.
RING_BOUND_S = 1.0


@pytest.fixture
async def store(redis: aioredis.Redis) -> Store:
    store = Store(redis, TENANT)
    await store.flow_upsert("support", {"skill": "s", "priority": 1, "queue_uri": "sip:q@127.0.0.1:9"})
    for i in range(AGENTS):
        await store.agent_upsert(f"a{i}", f"sip:a{i}@127.0.0.1:9", ["s"], None)
        await store.agent_login(f"a{i}")
    # the edge is alive for the whole test (else the reconciler would end its calls: edge_unknown)
    await redis.zadd(store.keys.edges, {EDGE: 2**52})
    return store


@pytest.fixture
async def dispatcher(redis_server: RedisServer, store: Store) -> AsyncIterator[None]:
    # claim_idle_ms as in production: a report left pending is not simply reclaimed at once
    settings = DispatcherSettings(redis_url=redis_server.url, tenant=TENANT, consumer="d1", block_ms=50,
                                  claim_idle_ms=10_000, timer_interval_ms=20, out_of_order_max_ms=2000)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    yield
    stop.set()
    await asyncio.wait_for(task, 10)


async def rung_within(redis: aioredis.Redis, store: Store, call_id: str, bound_s: float) -> None:
    async def rung() -> bool:
        cmds = [decode(f, i) for i, f in await redis.xrange(store.keys.commands(EDGE))]
        return any(c.type == "command.ring" and c.data["call_id"] == call_id for c in cmds)
    await wait_for(rung, timeout=bound_s)


async def on_media(producer: Producer, store: Store, call_id: str) -> None:
    """A real call as an edge reports it: arrived, then on the queue media (its caller ACKed): only
    then is it offered to an agent (offer.lua waits_for_media)."""
    await producer.publish(store.keys.reports, *arrival(call_id))
    await producer.publish(store.keys.reports, *report("report.media_answered", call_id, 2, purpose="queue",
                                                       uri="sip:q@127.0.0.1:9"))


async def test_out_of_order_reports_are_parked_while_real_calls_flow(redis: aioredis.Redis, store: Store,
                                                                     dispatcher: None) -> None:
    producer = Producer(redis)
    # an orphan (no such call, ever) and a report whose arrival is late
    await producer.publish(store.keys.reports, *report("report.call_ended", "ghost", 2, by="caller", reason="bye"))
    await producer.publish(store.keys.reports, *report("report.call_ended", "late", 2, by="caller", reason="cancel"))
    for i in range(AGENTS - 1):
        await asyncio.sleep(0.1 if i else 0.02)
        await on_media(producer, store, f"real{i}")
        await rung_within(redis, store, f"real{i}", RING_BOUND_S)
    assert await store.call("ghost") is None

    # the late arrival comes: its parked successor is applied right after it, in order
    await producer.publish(store.keys.reports, *arrival("late"))

    async def late_ended() -> bool:
        call = await store.call("late")
        return call is not None and call["state"] == "ended"
    await wait_for(late_ended, timeout=RING_BOUND_S)
    late = await store.call("late")
    assert late is not None and late["outcome"] == "abandoned" and late["seq"] == "2"

    # the orphan is dead-lettered with its reason once the bound passed, and nothing else is
    async def dead() -> bool:
        return int(await redis.xlen(store.keys.dead)) > 0
    await wait_for(dead, timeout=10)
    letters = await redis.xrange(store.keys.dead)
    assert len(letters) == 1
    fields = letters[0][1]
    assert b"unknown call ghost" in fields[b"error"]
    assert decode({k.decode()[5:]: v for k, v in fields.items() if k.startswith(b"orig_")}).data["call_id"] == "ghost"

    # every report settled: none left pending
    pending = await redis.xpending(store.keys.reports, "dispatcher")
    assert pending["pending"] == 0
    # and real calls still flow after it
    await on_media(producer, store, "after")
    await rung_within(redis, store, "after", RING_BOUND_S)
