"""Retention with a real cdr-writer (in-process) on a real redis-server and SQLite: a writer kept
down while more events arrive than the steps' old MAXLEN cap, with the retention job running all
along as the dispatchers run it, gets every row once started again (issue 12, acceptance 3 and 4).

Scaled to CI: the old cap was `events_maxlen` (1,000,000 by default); here 1,500 arrive
events, over the 1,000 the steps would have kept with `events_maxlen` 1000, and the fuse is set at
5,000 (5x, like the defaults 1,000,000 -> 5,000,000)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from test_cdr_writer import wait_for

from callcenter.db.engine import make_engine, upgrade
from callcenter.db.models import Cdr
from callcenter.retention import trim_streams
from callcenter.settings import CdrWriterSettings
from callcenter.store import Store
from callcenter.store.keys import Keys
from callcenter_cdr_writer.main import run
from callcenter_dev.producer import Producer
from callcenter_dev.servers import RedisServer
from callcenter_dispatcher.timers import reconcile_once

TENANT = "keep"
KEYS = Keys(TENANT)
T0 = 1_740_830_400_000
FAR = 10**14  # a "now" after every entry id: the keep window holds nothing back


def ended(call_id: str) -> dict[str, Any]:
    return {"ts": T0 + 60_000, "call_id": call_id, "flow": "sales", "caller": "bob", "outcome": "answered",
            "ended_by": "caller", "reason": "bye", "received_ms": T0, "wait_ms": 4000, "pickup_ms": 1500,
            "talk_ms": 55_000, "rejections": 0, "agent_id": "a1"}


def count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count(func.distinct(Cdr.call_id)))) or 0)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'cdr.sqlite3'}"
    upgrade(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


@pytest.fixture
def writer(redis_server: RedisServer, engine: Engine) -> Callable[[], AbstractAsyncContextManager[None]]:
    """The cdr-writer service, in-process, while inside an `async with` of what this returns."""
    settings = CdrWriterSettings(redis_url=redis_server.url, tenant=TENANT, database_url=str(engine.url),
                                 consumer="w1", block_ms=50, claim_idle_ms=100, batch=500)

    @asynccontextmanager
    async def running() -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(run(settings, stop))
        yield
        stop.set()
        await asyncio.wait_for(task, 10)
    return running


async def test_a_writer_down_past_the_old_cap_gets_every_row(redis: aioredis.Redis, engine: Engine,
                                                             writer: Callable[[], Any]) -> None:
    async def rows(n: int) -> bool:
        return count(engine) == n

    store, producer = Store(redis, TENANT), Producer(redis)
    await store.write_config({"events_maxlen": 5000})
    await store.agent_upsert("a1", "sip:a1@127.0.0.1", ["s"], None, now=T0)
    # the writer ran once (its group is registered), wrote a row, and stopped
    async with writer():
        await producer.publish(KEYS.events, "call.ended", ended("c0"))
        await wait_for(lambda: rows(1))
    # down: calls keep ending and agents keep changing; retention runs as the dispatchers run it
    now = T0
    for batch in range(6):
        for i in range(50):
            await producer.publish(KEYS.events, "call.ended", ended(f"c{batch}-{i}"))
            now += 1
            await store.agent_login("a1", now=now)   # agent.logged_in + agent.state_changed
            await store.agent_logout("a1", now=now)  # agent.logged_out + agent.state_changed
        done = await trim_streams(redis, KEYS, FAR, 0, 0)
        assert not done.capped
    # 300 call.ended + 1,200 agent events, none trimmed unread, + c0 (the trim keeps from the last delivered)
    assert await redis.xlen(KEYS.events) == 1501

    async with writer():
        await wait_for(lambda: rows(301), within_s=30)
    # read and acknowledged now: the next pass trims all of it
    await trim_streams(redis, KEYS, FAR, 0, 0)
    assert await redis.xlen(KEYS.events) == 1  # the last one delivered stays (the trim keeps from it)



async def test_the_dispatchers_reconciler_runs_the_retention(redis: aioredis.Redis) -> None:
    """The wiring: `reconcile_once`, which every dispatcher runs every CC_RECONCILE_INTERVAL_MS."""
    store, producer = Store(redis, TENANT), Producer(redis)
    for i in range(20):
        await producer.publish(KEYS.events, "agent.logged_in", {"ts": i, "agent_id": "a"})
    await redis.xgroup_create(KEYS.events, "cdr-writer", id="$")   # has read everything
    await redis.xgroup_create(KEYS.events, "bi-export", id="0")    # has read nothing
    await reconcile_once(store, 5000, "dispatcher", 0, 0)
    assert await redis.xlen(KEYS.events) == 20  # bi-export holds it all
    await redis.xgroup_destroy(KEYS.events, "bi-export")
    await reconcile_once(store, 5000, "dispatcher", 0, 0)
    assert await redis.xlen(KEYS.events) == 1  # from cdr-writer's last delivered on
