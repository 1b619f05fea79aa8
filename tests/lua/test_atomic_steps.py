"""A report step that fails is never taken for a duplicate (issue 10, item 2), on a real redis-server.

For each report type, a call is brought to where that report acts, then a fault is forced:
- one the step finds before its first write (a bad config value; the events or the edge's
  command stream, the config or the call's hash holding a key of another type): the step answers
  FAILED 'preflight: ...' and changes nothing, so the redelivery after the fault is mended applies
  the report whole;
- one it hits half-way (the flow's statistics hash holding a string: some writes done, Redis has
  no rollback): the step answers FAILED with Redis' error, and a redelivery, even after the fault
  is mended, answers FAILED (dead-lettered by the dispatcher), never DUPLICATE, and ends the call
  with its CDR event once the fault is mended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from lua_harness import EDGE, Harness

from callcenter.store import RC

Setup = Callable[[Harness], Awaitable[tuple[str, dict[str, Any]]]]


async def _two_agents(h: Harness, **flow: Any) -> None:
    await h.store.write_config({"reject_on_no_agents": 0})
    await h.flow(**flow)
    await h.agent("a1", ["sales"])
    await h.agent("a2", ["sales"])


async def arrived(h: Harness) -> tuple[str, dict[str, Any]]:
    await _two_agents(h)
    return "report.call_arrived", {"flow": "support", "caller": "alice", "caller_uri": "sip:alice@127.0.0.1",
                                   "sip_call_id": "c1@x", "source": "127.0.0.1:1"}


async def agent_answered(h: Harness) -> tuple[str, dict[str, Any]]:
    await _two_agents(h)
    await h.arrive("c1")
    call = await h.store.call("c1")
    assert call is not None
    return "report.agent_answered", {"offer_id": call["offer"], "agent_id": call["agent"]}


async def agent_failed(h: Harness) -> tuple[str, dict[str, Any]]:
    await _two_agents(h)
    await h.arrive("c1")  # rings one agent; its failure offers the call to the other
    call = await h.store.call("c1")
    assert call is not None
    return "report.agent_failed", {"offer_id": call["offer"], "agent_id": call["agent"], "reason": "rejected",
                                   "code": 603}


async def call_ended(h: Harness) -> tuple[str, dict[str, Any]]:
    await _two_agents(h)
    await h.arrive("c1")
    return "report.call_ended", {"by": "caller", "reason": "bye"}


async def media_answered(h: Harness) -> tuple[str, dict[str, Any]]:
    # a flow-id message: the call waits for its queue media's answer, then is offered
    await _two_agents(h, flow_id_uri="sip:flowid@127.0.0.1:6")
    await h.arrive("c1", on_media=False)
    return "report.media_answered", {"purpose": "queue", "uri": "sip:queue@127.0.0.1:7000"}


async def media_ended(h: Harness) -> tuple[str, dict[str, Any]]:
    await _two_agents(h, welcome_uri="sip:welcome@127.0.0.1:1")
    await h.arrive("c1")
    await h.report("report.media_answered", "c1", purpose="welcome", uri="sip:welcome@127.0.0.1:1")
    return "report.media_ended", {"purpose": "welcome"}


async def media_failed(h: Harness) -> tuple[str, dict[str, Any]]:
    await _two_agents(h, welcome_uri="sip:welcome@127.0.0.1:1")
    await h.arrive("c1")
    return "report.media_failed", {"purpose": "welcome", "reason": "unreachable"}


SETUPS: list[Setup] = [arrived, agent_answered, agent_failed, call_ended, media_answered, media_ended, media_failed]


def _payload(h: Harness, rtype: str, data: dict[str, Any]) -> bytes:
    seq = 1 if rtype == "report.call_arrived" else h.seq["c1"] + 1
    return msgpack.packb({"call_id": "c1", "edge": EDGE, "seq": seq, "ts": h.now, **data})


async def _apply(h: Harness, rtype: str, payload: bytes) -> Any:
    return await h.store.apply_report(rtype, "9-1", payload, now=h.now)


async def _everything(redis: aioredis.Redis) -> dict[bytes, bytes | None]:
    return {key: await redis.dump(key) for key in sorted(await redis.keys("*"))}


async def _wrong_type(redis: aioredis.Redis, key: str) -> Callable[[], Awaitable[None]]:
    """Replace `key` with a string; the returned coroutine function puts it back."""
    kept = key + ":kept"
    if await redis.exists(key):
        await redis.rename(key, kept)
    await redis.set(key, "not what a step expects")

    async def mend() -> None:
        await redis.delete(key)
        if await redis.exists(kept):
            await redis.rename(kept, key)
    return mend


async def _bad_maxlen(h: Harness) -> Callable[[], Awaitable[None]]:
    await h.redis.hset(h.store.keys.config, "events_maxlen", "1e30")  # issue 10: accepted by the api

    async def mend() -> None:
        await h.redis.hdel(h.store.keys.config, "events_maxlen")
    return mend


FAULTS: dict[str, Callable[[Harness], Awaitable[Callable[[], Awaitable[None]]]]] = {
    "events_maxlen": _bad_maxlen,
    "events_not_a_stream": lambda h: _wrong_type(h.redis, h.store.keys.events),
    "commands_not_a_stream": lambda h: _wrong_type(h.redis, h.store.keys.commands(EDGE)),
    # issue 15: the config's type is checked by reading it (it used to fail half-way, at cfg()'s
    # HGETALL, before its TYPE check), the call's by the step's read of its hash
    "config_not_a_hash": lambda h: _wrong_type(h.redis, h.store.keys.config),
    "call_not_a_hash": lambda h: _wrong_type(h.redis, h.store.keys.call("c1")),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("setup", SETUPS, ids=lambda f: f.__name__)
async def test_a_fault_found_before_the_first_write_leaves_no_trace_and_the_redelivery_applies_whole(
        redis: aioredis.Redis, setup: Setup, fault: str) -> None:
    # what the report does without a fault, on a twin tenant: the reference result
    twin = Harness(redis)
    twin.store = type(twin.store)(redis, "twin")
    rtype, data = await setup(twin)
    want = await _apply(twin, rtype, _payload(twin, rtype, data))
    assert want.rc is RC.OK, want

    h = Harness(redis)
    rtype, data = await setup(h)
    payload = _payload(h, rtype, data)
    mend = await FAULTS[fault](h)
    before = await _everything(redis)
    res = await _apply(h, rtype, payload)
    assert res.rc is RC.FAILED and res.detail.startswith("preflight: "), res
    assert await _everything(redis) == before  # nothing written
    await mend()
    assert await _apply(h, rtype, payload) == want  # the redelivery applies the report whole
    assert (await _apply(h, rtype, payload)).rc is RC.DUPLICATE  # and only then is it done


@pytest.mark.parametrize("setup", SETUPS, ids=lambda f: f.__name__)
async def test_a_step_failing_half_way_is_never_taken_for_a_duplicate_and_its_redelivery_ends_the_call(
        redis: aioredis.Redis, setup: Setup) -> None:
    h = Harness(redis)
    rtype, data = await setup(h)
    payload = _payload(h, rtype, data)
    mend = await _wrong_type(redis, h.store.keys.flow_stats("support"))
    res = await _apply(h, rtype, payload)
    assert res.rc is RC.FAILED and res.detail.startswith("half-way: ") and "WRONGTYPE" in res.detail, res
    # a redelivery while the fault is still there fails again, the same way
    res = await _apply(h, rtype, payload)
    assert res.rc is RC.FAILED and res.detail.startswith("half-way: "), res
    await mend()
    ended_before = len(await h.events("call.ended"))
    again = await _apply(h, rtype, payload)
    assert again.rc is RC.FAILED, again
    assert again.detail.startswith("failed half-way before: ") and "WRONGTYPE" in again.detail, again
    # the call is ended, with its CDR event, and the edge told to hang up
    call = await h.store.call("c1")
    assert call is not None and (call["state"], call["outcome"]) == ("ended", "failed"), call
    ended = await h.events("call.ended")
    assert len(ended) == ended_before + 1 and ended[-1][1]["reason"] == "step_failed"
    assert ("command.hangup", "step_failed") in [(t, d.get("reason")) for t, d in await h.commands()]
    assert not await redis.sismember(h.store.keys.calls, "c1")
    assert not await redis.sismember(h.store.keys.edge_calls(EDGE), "c1")
    # and stays done with: a further redelivery changes nothing and is still no duplicate
    events = await redis.xlen(h.store.keys.events)
    res = await _apply(h, rtype, payload)
    assert res.rc is RC.FAILED and res.detail.endswith(call["failed_why"]), res
    assert await redis.xlen(h.store.keys.events) == events


async def test_a_payload_lua_cannot_read_is_failed_for_that_report_alone(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    rtype, data = await arrived(h)
    batch = [(rtype, "9-1", b"\xc1 not msgpack"), (rtype, "9-2", _payload(h, rtype, data))]
    results = await h.store.apply_reports(batch, now=h.now)
    assert results[0].rc is RC.FAILED and results[0].detail.startswith("script error: "), results[0]
    assert results[1].rc is RC.OK, results[1]


async def test_a_step_failing_half_way_after_offering_another_call_leaves_that_offer_whole(
        redis: aioredis.Redis) -> None:
    """Found by the state machine: c1's end frees a1, who is offered c2 (another flow) in the same
    step; the step then fails on c2's flow statistics. The offer it made must stand whole: its lease
    and ring are written before its counters (otherwise an offer without its lease, the agent
    ringing for ever)."""
    h = Harness(redis)
    await h.store.write_config({"reject_on_no_agents": 0})
    await h.flow()
    await h.flow("other")
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.arrive("c1")
    await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")
    await h.arrive("c2", flow="other")
    mend = await _wrong_type(redis, h.store.keys.flow_stats("other"))
    res = await h.report("report.call_ended", "c1", by="caller", reason="bye")
    await mend()
    assert res.rc is RC.FAILED and res.detail.startswith("half-way: "), res
    c2 = await h.store.call("c2")
    assert c2 is not None and (c2["state"], c2["agent"]) == ("offered", "a1")
    assert await h.state("a1") == "ringing"
    assert f"offer|c2|{c2['offer']}".encode() in await redis.zrange(h.store.keys.timers, 0, -1)
    assert ("command.ring", "c2") in [(t, d["call_id"]) for t, d in await h.commands()]
