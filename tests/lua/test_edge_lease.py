"""edge_beat.lua and edge_release.lua: one process per edge id, the lease renewed with the heartbeat."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from callcenter.store import RC, Store

EDGE = "edge-1"
LEASE_MS = 300
T0 = 1_700_000_000_000


async def test_the_first_beat_takes_the_id_and_writes_the_heartbeat(redis: aioredis.Redis) -> None:
    store = Store(redis, "t")
    assert (await store.edge_beat(EDGE, "host/1/a", LEASE_MS, now=T0)).rc is RC.OK
    assert await redis.get(store.keys.edge_lease(EDGE)) == b"host/1/a"
    assert 0 < await redis.pttl(store.keys.edge_lease(EDGE)) <= LEASE_MS
    assert await redis.zscore(store.keys.edges, EDGE) == T0
    # the holder renews it and moves its heartbeat on
    assert (await store.edge_beat(EDGE, "host/1/a", LEASE_MS, now=T0 + 100)).rc is RC.OK
    assert await redis.zscore(store.keys.edges, EDGE) == T0 + 100


async def test_another_process_is_refused_and_writes_nothing(redis: aioredis.Redis) -> None:
    store = Store(redis, "t")
    await store.edge_beat(EDGE, "host/1/a", LEASE_MS, now=T0)
    res = await store.edge_beat(EDGE, "host/2/b", LEASE_MS, now=T0 + 50)
    assert (res.rc, res.detail) == (RC.ALREADY, "host/1/a")
    assert await redis.zscore(store.keys.edges, EDGE) == T0
    assert (await store.edge_release(EDGE, "host/2/b")).rc is RC.NOT_FOUND
    assert await redis.get(store.keys.edge_lease(EDGE)) == b"host/1/a"
    assert await redis.zscore(store.keys.edges, EDGE) == T0


async def test_a_lease_not_renewed_expires_and_another_process_takes_the_id(redis: aioredis.Redis) -> None:
    store = Store(redis, "t")
    await store.edge_beat(EDGE, "host/1/a", LEASE_MS, now=T0)
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    assert (await store.edge_beat(EDGE, "host/2/b", LEASE_MS, now=T0 + 400)).rc is RC.OK
    assert await redis.get(store.keys.edge_lease(EDGE)) == b"host/2/b"
    # the old holder, back (it was paused), finds the id taken
    assert (await store.edge_beat(EDGE, "host/1/a", LEASE_MS, now=T0 + 500)).rc is RC.ALREADY


async def test_a_late_beat_never_moves_the_heartbeat_back(redis: aioredis.Redis) -> None:
    store = Store(redis, "t")
    await store.edge_beat(EDGE, "host/1/a", LEASE_MS, now=T0 + 1000)
    await store.edge_beat(EDGE, "host/1/a", LEASE_MS, now=T0)   # sent before, applied after
    assert await redis.zscore(store.keys.edges, EDGE) == T0 + 1000


async def test_release_frees_the_id_at_once_and_removes_the_heartbeat(redis: aioredis.Redis) -> None:
    store = Store(redis, "t")
    await store.edge_beat(EDGE, "host/1/a", LEASE_MS, now=T0)
    assert (await store.edge_release(EDGE, "host/1/a")).rc is RC.OK
    assert await redis.get(store.keys.edge_lease(EDGE)) is None
    assert await redis.zscore(store.keys.edges, EDGE) is None
    assert (await store.edge_beat(EDGE, "host/2/b", LEASE_MS, now=T0 + 10)).rc is RC.OK


async def test_bad_arguments_are_invalid(redis: aioredis.Redis) -> None:
    store = Store(redis, "t")
    assert (await store.edge_beat(EDGE, "", LEASE_MS)).rc is RC.INVALID
    assert (await store.edge_beat(EDGE, "host/1/a", 0)).rc is RC.INVALID
    assert (await store.edge_release("", "host/1/a")).rc is RC.INVALID
