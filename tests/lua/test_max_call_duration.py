"""A flow's max_call_duration_s: a connected call is hung up at the limit (command.hangup, reason
max_duration), the edge's end report gives the CDR that reason and frees the agent. Real
redis-server, controlled clock."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import Harness


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    return await Harness.configured(redis, reject_on_no_agents=0)


def hangups(cmds: list) -> list[dict]:  # type: ignore[type-arg]
    return [d for t, d in cmds if t == "command.hangup"]


async def test_connected_call_is_hung_up_at_the_flow_limit(h: Harness) -> None:
    await h.flow(max_call_duration_s=60)
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    h.now += 5_000                                       # rings 5 s: the limit counts from the answer
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    h.now += 59_999
    assert await h.store.fire_timers(now=h.now) == 0
    assert hangups(await h.commands()) == []
    h.now += 1
    assert await h.store.fire_timers(now=h.now) == 1
    assert hangups(await h.commands()) == [{"call_id": "c1", "reason": "max_duration"}]
    assert await h.state("a1") == "in_call"              # until the edge says the call is over
    await h.report("report.call_ended", "c1", by="edge", reason="max_duration")
    ended = [d for _, d in await h.events("call.ended")]
    assert (ended[0]["reason"], ended[0]["ended_by"], ended[0]["outcome"]) == ("max_duration", "edge", "answered")
    assert ended[0]["talk_ms"] == 60_000
    assert await h.state("a1") != "in_call"


async def test_no_limit_sets_no_timer(h: Harness) -> None:
    await h.flow()                                       # max_call_duration_s 0: no limit
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    assert await h.redis.zscore(h.store.keys.timers, "maxdur|c1") is None


async def test_call_ended_before_the_limit_takes_its_timer_along(h: Harness) -> None:
    await h.flow(max_call_duration_s=30)
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    assert await h.redis.zscore(h.store.keys.timers, "maxdur|c1") == h.now + 30_000
    h.now += 10_000
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    assert await h.redis.zscore(h.store.keys.timers, "maxdur|c1") is None
    h.now += 30_000
    await h.store.fire_timers(now=h.now)
    assert hangups(await h.commands()) == []
