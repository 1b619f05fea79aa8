"""What an edge id leaves in Redis once it is gone: edge_lost (its calls ended or handed over) and
edge_release (a clean stop) delete its command stream with its consumer group, its fuse counts and its
place in its address group; the lost mark expires (max_call_s) unless the id comes back."""

from __future__ import annotations

import redis.asyncio as aioredis
from lua_harness import EDGE, Harness

from callcenter.store import RC

LAPSE = 5000
MAX_CALL_S = 600


async def edge_with_a_stream(h: Harness, edge: str, group: str) -> None:
    """`edge` beats in `group` and has read its command stream (its group exists), one call that ends."""
    await h.redis.hset(h.store.keys.config, mapping={"reject_on_no_agents": 0, "max_call_s": MAX_CALL_S})
    assert (await h.store.edge_beat(edge, f"token-{edge}", LAPSE, group, now=h.now)).rc is RC.OK
    stream = h.store.keys.commands(edge)
    await h.redis.xgroup_create(stream, "sip-edge", id="0", mkstream=True)
    await h.redis.xadd(stream, {"type": "command.hangup", "data": b""})
    await h.redis.hset(h.store.keys.retention, mapping={f"capped:commands:{edge}": 1,
                                                        f"capped_unread:commands:{edge}": 3})


async def test_a_lost_edge_leaves_no_stream_and_its_mark_expires(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await h.flow()
    await edge_with_a_stream(h, EDGE, "sbc-1")
    await h.arrive("c1")   # ended as edge_lost: the stream goes only once no call is left
    keys = h.store.keys

    h.now += LAPSE + 1
    res = await h.store.edge_lost(EDGE, LAPSE, now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "1")
    assert await redis.exists(keys.commands(EDGE)) == 0
    assert await redis.hkeys(keys.retention) == []
    assert await redis.sismember(keys.edge_group("sbc-1"), EDGE) == 0
    info = await redis.hgetall(keys.edge_info(EDGE))
    assert set(info) == {b"lost_ms"}, info
    assert 0 < await redis.ttl(keys.edge_info(EDGE)) <= MAX_CALL_S

    # the id comes back (it was cut off): it learns it was lost, its info is kept again, in its group
    res = await h.store.edge_beat(EDGE, f"token-{EDGE}", LAPSE, "sbc-1", now=h.now + 10)
    assert (res.rc, res.detail) == (RC.OK, str(h.now))
    assert await redis.hgetall(keys.edge_info(EDGE)) == {b"group": b"sbc-1"}
    assert await redis.ttl(keys.edge_info(EDGE)) == -1
    assert await redis.sismember(keys.edge_group("sbc-1"), EDGE) == 1


async def test_the_stream_stays_while_calls_of_the_lost_edge_are_left(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await h.flow()
    await edge_with_a_stream(h, EDGE, "")
    for call_id in ("c1", "c2"):
        await h.arrive(call_id)
    h.now += LAPSE + 1
    assert (await h.store.edge_lost(EDGE, LAPSE, limit=1, now=h.now)).detail == "1"
    assert await redis.exists(h.store.keys.commands(EDGE)) == 1   # one call left: the next pass
    assert (await h.store.edge_lost(EDGE, LAPSE, limit=1, now=h.now)).detail == "1"
    assert await redis.exists(h.store.keys.commands(EDGE)) == 0


async def test_a_released_id_leaves_nothing(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await edge_with_a_stream(h, "edge-old", "sbc-1")
    keys = h.store.keys
    assert (await h.store.edge_release("edge-old", "token-edge-old")).rc is RC.OK
    for key in (keys.commands("edge-old"), keys.edge_info("edge-old"), keys.edge_lease("edge-old")):
        assert await redis.exists(key) == 0, key
    assert await redis.sismember(keys.edge_group("sbc-1"), "edge-old") == 0
    assert await redis.hkeys(keys.retention) == []
    # a process of that id again: its beat puts it back in its group
    assert (await h.store.edge_beat("edge-old", "token-2", LAPSE, "sbc-1", now=h.now)).rc is RC.OK
    assert await redis.sismember(keys.edge_group("sbc-1"), "edge-old") == 1

