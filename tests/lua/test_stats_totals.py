"""The tenant's statistics are the sum of its flows' (issue 15: one hash per flow, no tenant-wide
copy written by every step): the totals the api reads, a deleted flow's counts, a reset, and what
a call's steps write to the statistics."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import Harness

from callcenter.store.reads import Reads


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    return await Harness.configured(redis, reject_on_no_agents=0, wrapup_s=0)


async def talk(h: Harness, call_id: str, flow: str, agent: str, wait_ms: int, talk_ms: int) -> None:
    await h.arrive(call_id, flow=flow)
    h.now += wait_ms
    await h.report("report.agent_answered", call_id, offer_id="1", agent_id=agent)
    h.now += talk_ms
    await h.report("report.call_ended", call_id, by="caller", reason="bye")


async def test_totals_are_the_sum_of_the_flows_and_keep_a_deleted_flow(h: Harness) -> None:
    await h.flow("a", skill="sa")
    await h.flow("b", skill="sb")
    await h.agent("x", ["sa"])
    await h.agent("y", ["sb"])
    await talk(h, "c1", "a", "x", 1000, 10_000)
    await talk(h, "c2", "b", "y", 3000, 30_000)
    await h.arrive("c3", flow="b")  # offered to y, and the caller hangs up while it rings
    stats = await Reads(h.redis, h.store.keys).stats()
    assert (stats.global_.onhold, stats.global_.incalls) == (1, 3)
    h.now += 2000
    await h.report("report.call_ended", "c3", by="caller", reason="bye")
    stats = await Reads(h.redis, h.store.keys).stats()
    g = stats.global_
    assert (g.incalls, g.distributed, g.answered, g.abandoned, g.talk_n, g.onhold) == (3, 3, 2, 1, 2, 0)
    assert (g.att_ms, g.awt_ms) == (20_000, 2000)  # (10 + 30) / 2 s and (1 + 3 + 2) / 3 s
    by_flow = {f.flow_id: f for f in stats.flows}
    assert (by_flow["a"].incalls, by_flow["b"].incalls) == (1, 2)
    assert (by_flow["a"].aht_ema_ms, by_flow["b"].aht_ema_ms) == (10_000, 30_000)
    # nothing is counted in the tenant-wide hash any more: it keeps when the counters were reset
    assert await h.redis.hgetall(h.store.keys.stats) == {}

    assert (await h.store.flow_delete("a", now=h.now)).rc.name == "OK"
    g = (await Reads(h.redis, h.store.keys).stats()).global_
    assert (g.incalls, g.answered) == (3, 2)  # a deleted flow's calls still count

    await h.store.stats_reset(now=h.now)
    g = (await Reads(h.redis, h.store.keys).stats()).global_
    assert (g.incalls, g.answered, g.distributed) == (0, 0, 0) and g.reset_ms == h.now
    members = {m.decode() for m in await h.redis.smembers(h.store.keys.statflows)}
    assert members == {"b"}  # the deleted flow, reset and with nothing on hold, leaves the totals
    await talk(h, "c4", "b", "y", 500, 1000)
    g = (await Reads(h.redis, h.store.keys).stats()).global_
    assert (g.incalls, g.answered, g.att_ms) == (1, 1, 1000)


async def test_a_deleted_flow_with_a_call_on_hold_stays_counted_through_a_reset(h: Harness) -> None:
    await h.flow("a", skill="sa", welcome_uri="sip:welcome@127.0.0.1")
    await h.arrive("c1", flow="a")  # on welcome media: on hold, not queued, so the flow can go
    assert (await h.store.flow_delete("a", now=h.now)).rc.name == "OK"
    await h.store.stats_reset(now=h.now)
    assert (await Reads(h.redis, h.store.keys).stats()).global_.onhold == 1
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    g = (await Reads(h.redis, h.store.keys).stats()).global_
    assert (g.onhold, g.abandoned) == (0, 1)


async def test_a_call_writes_its_flow_statistics_only(h: Harness) -> None:
    """Per answered call: arrival 2 counters, offer 1, answer 2, end one read and one write of the
    flow's hash; nothing to the tenant-wide hash (MONITOR on the same server)."""
    await h.flow("a", skill="sa")
    await h.agent("x", ["sa"])
    seen: list[str] = []
    pool = h.redis.connection_pool
    mon = aioredis.Redis(connection_pool=aioredis.ConnectionPool(**pool.connection_kwargs))
    async with mon.monitor() as m:
        await talk(h, "c1", "a", "x", 1000, 2000)
        await h.redis.echo("done")
        while True:
            cmd = (await m.next_command())["command"]
            if "done" in cmd and cmd.startswith("ECHO"):
                break
            seen.append(cmd)
    await mon.aclose()
    stats_key, flow_key = h.store.keys.stats, h.store.keys.flow_stats("a")
    assert not [c for c in seen if f" {stats_key} " in c + " " and not c.startswith("FCALL")]
    on_flow = [c.split(" ", 1)[0] for c in seen if flow_key in c]
    assert on_flow.count("HINCRBY") == 5 and on_flow.count("HMGET") == 1 and on_flow.count("HSET") == 1
