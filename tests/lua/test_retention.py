"""Stream retention on a real redis-server: the Lua steps append without a cap, and
`callcenter.retention` trims only what every registered consumer group has acknowledged, with a
hard cap as the last fuse that raises `stream.capped` and counts it before it trims unread entries."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from lua_harness import Harness

from callcenter.contract.codec import decode, encode
from callcenter.retention import trim_streams

CAP = 1000  # the smallest events_maxlen the registry takes
FAR = 10**14  # a "now" after every id of the test (ids are wall-clock times)


async def _login_logout(h: Harness, rounds: int) -> None:
    """Two agent events and some agent.state_changed per round: cheap events from real steps."""
    for _ in range(rounds):
        h.now += 1
        await h.store.agent_login("a1", now=h.now)
        await h.store.agent_logout("a1", now=h.now)


async def _add(redis: aioredis.Redis, stream: str, n: int) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(stream, encode("agent.logged_in", {"ts": i, "agent_id": "a"}))  # type: ignore[arg-type]
        await pipe.execute()


async def test_the_steps_append_events_and_commands_without_a_cap(h: Harness) -> None:
    """Before: every XADD carried MAXLEN ~ events_maxlen, so a reader away for long lost entries."""
    await h.redis.hset(h.store.keys.config, mapping={"events_maxlen": CAP})
    await h.agent("a1", ["sales"], login=False)
    await _login_logout(h, 400)
    assert await h.redis.xlen(h.store.keys.events) > 1.5 * CAP


async def test_a_lagging_group_holds_the_trim_and_acknowledged_entries_go(h: Harness) -> None:
    keys = h.store.keys
    await _add(h.redis, keys.events, 100)
    await h.redis.xgroup_create(keys.events, "fast", id="0")
    await h.redis.xgroup_create(keys.events, "slow", id="0")
    fast: Any = await h.redis.xreadgroup("fast", "c", {keys.events: ">"}, count=100)
    await h.redis.xack(keys.events, "fast", *[eid for eid, _ in fast[0][1]])
    slow: Any = await h.redis.xreadgroup("slow", "c", {keys.events: ">"}, count=40)
    slow_ids = [eid for eid, _ in slow[0][1]]
    await h.redis.xack(keys.events, "slow", *slow_ids[:30])  # 30 acknowledged, 10 pending, 60 unread

    done = await trim_streams(h.redis, keys, now=FAR, reports_keep_ms=0, events_keep_ms=0)
    left = [eid for eid, _ in await h.redis.xrange(keys.events)]
    assert left[0] == slow_ids[30]  # the oldest entry "slow" holds pending
    assert len(left) == 70 and done.acknowledged == {keys.events: 30} and not done.capped

    # recent entries stay for readers without a group (keep_ms), whatever the groups acknowledged
    await h.redis.xack(keys.events, "slow", *slow_ids[30:])
    rest: Any = await h.redis.xreadgroup("slow", "c", {keys.events: ">"}, count=100)
    await h.redis.xack(keys.events, "slow", *[eid for eid, _ in rest[0][1]])
    done = await trim_streams(h.redis, keys, now=0, reports_keep_ms=0, events_keep_ms=10**9)
    assert await h.redis.xlen(keys.events) == 70 and not done.acknowledged


async def test_a_stream_without_a_group_is_kept_below_its_cap(h: Harness) -> None:
    await _add(h.redis, h.store.keys.reports, 50)
    done = await trim_streams(h.redis, h.store.keys, now=FAR, reports_keep_ms=0, events_keep_ms=0)
    assert await h.redis.xlen(h.store.keys.reports) == 50 and not done.acknowledged and not done.capped


async def test_the_fuse_raises_its_alarm_and_counts_before_trimming_unread_entries(h: Harness) -> None:
    keys = h.store.keys
    edge_commands = keys.commands("edge-9")
    await h.redis.zadd(keys.edges, {"edge-9": h.now})
    await h.redis.hset(keys.config, mapping={"commands_maxlen": CAP})
    await _add(h.redis, edge_commands, CAP + 300)
    await h.redis.xgroup_create(edge_commands, "edge", id="0")  # registered, never read: all unread

    done = await trim_streams(h.redis, keys, now=h.now, reports_keep_ms=0, events_keep_ms=0)
    assert done.capped == {edge_commands: 300}
    assert await h.redis.xlen(edge_commands) == CAP
    alarms = [decode(f, eid) for eid, f in await h.redis.xrange(keys.events)]
    assert [(a.type, a.data["stream"], a.data["length"], a.data["cap"], a.data["trimmed"]) for a in alarms] == [
        ("stream.capped", "commands:edge-9", CAP + 300, CAP, 300)]
    assert await h.redis.hgetall(keys.retention) == {b"capped:commands:edge-9": b"1",
                                                    b"capped_unread:commands:edge-9": b"300"}
    # the oldest unread entries went: what is left is the newest CAP
    first: Any = await h.redis.xrange(edge_commands, count=1)
    assert decode(first[0][1]).data["ts"] == 300
