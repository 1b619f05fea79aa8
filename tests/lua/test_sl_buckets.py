"""The service-level buckets (`cc:{t}:sl:<flow>:<minute>`) on a real redis-server: a bucket gets its
62-minute TTL with its first count and keeps it (issue 15: the EXPIRE is sent with the first count
of each field, no longer with every count), and a bucket whose TTL was lost gets one again with the
next new field."""

from __future__ import annotations

import redis.asyncio as aioredis
from lua_harness import Harness

from callcenter.store import RC


async def test_a_bucket_lives_62_minutes_from_its_first_count(redis: aioredis.Redis) -> None:
    h = await Harness.configured(redis, reject_on_no_agents=0)
    await h.flow()
    bucket = h.store.keys.sl("support", h.now // 60000)
    assert (await h.arrive("c1")).rc is RC.OK
    assert await redis.hget(bucket, "offered") == b"1"
    first = await redis.pttl(bucket)
    assert 3_700_000 < first <= 3_720_000, first
    await redis.pexpire(bucket, 3_000_000)  # as if 12 minutes had passed (the TTL runs in real time)
    assert (await h.arrive("c2")).rc is RC.OK  # a second count of the same field: the TTL stays
    assert await redis.hget(bucket, "offered") == b"2"
    assert 2_900_000 < await redis.pttl(bucket) <= 3_000_000
    await redis.persist(bucket)  # a bucket without a TTL (never written by a step)
    await redis.hdel(bucket, "offered")  # its next first count sets the TTL again
    assert (await h.arrive("c3")).rc is RC.OK
    assert 3_700_000 < await redis.pttl(bucket) <= 3_720_000
