"""The sip-edge's checkpoints on a real Redis: written with the reports, read back by a restarted edge.

A report and its checkpoint go in one MULTI; `load` gives each call's last seq and, once it talks,
its legs; a call the dispatchers already ended is given as not live and its checkpoint removed;
`call_ended` deletes the checkpoint; every key has a TTL.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from callcenter.contract.reports import AgentAnswered, CallArrived, CallEnded, MediaAnswered
from callcenter.store.keys import Keys
from callcenter_sip_edge.checkpoint import Checkpoints, DialogCheckpoint

EDGE = "edge-a"
LEGS = {"caller": {"call_id": "c1@x", "local_cseq": 7}, "agent": {"call_id": "a1@x", "local_cseq": 3}}


def arrived(call_id: str) -> CallArrived:
    return CallArrived(call_id=call_id, edge=EDGE, seq=1, ts=1, flow="sales", caller="ann", caller_uri="sip:ann@x",
                       sip_call_id=f"{call_id}@x", source="127.0.0.1:5060")


async def write(redis: aioredis.Redis, checkpoints: Checkpoints, *items: object) -> None:
    plan = checkpoints.plan(items)   # type: ignore[arg-type]
    async with redis.pipeline(transaction=True) as pipe:
        for command in plan.commands:
            pipe.execute_command(*command)
        await pipe.execute()
    checkpoints.writer.applied(plan)


async def test_checkpoints_are_loaded_with_their_seq_and_legs_and_deleted_at_the_end(redis: aioredis.Redis) -> None:
    keys = Keys("t")
    checkpoints = Checkpoints(redis, keys, EDGE)
    await redis.sadd(keys.calls, "talking", "waiting")     # the dispatcher's live calls
    await write(redis, checkpoints, arrived("talking"), arrived("waiting"), arrived("over"), arrived("done"),
                AgentAnswered(call_id="talking", edge=EDGE, seq=2, ts=2, offer_id="o1", agent_id="7"),
                DialogCheckpoint("talking", {"agent_id": "7", "offer_id": "o1", "legs": LEGS}),
                MediaAnswered(call_id="waiting", edge=EDGE, seq=2, ts=2, purpose="queue", uri="sip:q@x"),
                AgentAnswered(call_id="over", edge=EDGE, seq=2, ts=2, offer_id="o2", agent_id="8"),
                CallEnded(call_id="done", edge=EDGE, seq=2, ts=3, by="caller", reason="bye"))
    assert 0 < await redis.ttl(keys.dialog("talking")) <= checkpoints.ttl_s
    # renewed at most once a minute (checkpoint_writes.py): given that minute more
    assert checkpoints.ttl_s < await redis.ttl(keys.edge_dialogs(EDGE)) <= checkpoints.writer.index_ttl_s
    assert not await redis.exists(keys.dialog("done"))

    calls = {c.call_id: c for c in await checkpoints.load()}
    assert sorted(calls) == ["over", "talking", "waiting"]
    talking = calls["talking"]
    assert (talking.seq, talking.phase, talking.agent_id, talking.offer_id, talking.legs, talking.live) == (
        2, "agent_answered", "7", "o1", LEGS, True)
    assert (talking.flow, talking.caller, talking.sip_call_id) == ("sales", "ann", "talking@x")
    assert (calls["waiting"].seq, calls["waiting"].phase, calls["waiting"].legs) == (2, "media_answered", None)
    # ended by the dispatchers meanwhile (not in cc:{t}:calls): handed over once, then forgotten
    assert calls["over"].live is False
    assert not await redis.exists(keys.dialog("over"))
    assert sorted(c.call_id for c in await checkpoints.load()) == ["talking", "waiting"]
