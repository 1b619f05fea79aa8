"""/v1/calls and /v1/queues: live views read straight from Redis (no SQL).

Reads `cc:{t}:calls` and the call hashes, `cc:{t}:flows`, the flow hashes and the per-flow
queues `cc:{t}:queue:<flow>` and `cc:{t}:chatq:<flow>` (sorted sets, lowest score served first). One write: the external
dispatch of a waiting call to an agent (`dispatch_call.lua`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status

from callcenter.store import RC
from callcenter_api import provisioning
from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import CallOut, DispatchIn, DispatchOut, QueueOut

router = APIRouter(prefix="/v1", tags=["live"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: str | None, default: int | None = None) -> int | None:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def call_view(call_id: str, fields: dict[str, str]) -> CallOut:
    return CallOut(call_id=call_id, state=fields.get("state", ""), flow=fields.get("flow", ""),
                   caller=fields.get("caller", ""), agent_id=fields.get("agent") or None,
                   edge=fields.get("edge") or None, received_ms=_int(fields.get("received_ms")),
                   media_type=fields.get("media_type") or "audio", fields=fields)


@router.get("/calls")
async def list_calls(services: ServicesDep) -> list[CallOut]:
    """Calls not yet ended, oldest first."""
    keys = services.store.keys
    ids = sorted(_text(m) for m in await services.redis.smembers(keys.calls))
    async with services.redis.pipeline(transaction=False) as pipe:
        for call_id in ids:
            pipe.hgetall(keys.call(call_id))
        hashes = await pipe.execute()
    calls = [call_view(call_id, {_text(k): _text(v) for k, v in h.items()})
             for call_id, h in zip(ids, hashes, strict=True) if h]  # a call may end between the two reads
    return sorted(calls, key=lambda c: (c.received_ms or 0, c.call_id))


@router.get("/calls/{call_id}")
async def get_call(call_id: Annotated[str, Path(max_length=256)], services: ServicesDep) -> CallOut:
    """A live call, or an ended one while its hash is kept (ended_call_ttl_s, one hour by default)."""
    fields = await services.store.call(call_id)
    if fields is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call_id!r} does not exist (or ended long ago)")
    return call_view(call_id, fields)


@router.post("/calls/{call_id}/dispatch",
             responses={404: {"description": "unknown (or ended) call, unknown agent"},
                        409: {"description": "the call is not queued, the agent is not free or lacks the skill"}})
async def dispatch_call(call_id: Annotated[str, Path(max_length=256)], body: DispatchIn,
                        services: ServicesDep) -> DispatchOut:
    """Offer a waiting call to a free agent holding the flow's skill (the reference's
    `dispatch_call_to_agent`): meant for external dispatching (`internal_dispatching` off in
    `PATCH /v1/config`), allowed either way. The agent rings as with an internal offer."""
    res = await services.store.dispatch_call(call_id, body.agent_id)
    if res.rc is RC.NOT_FOUND and res.detail == "agent" and await provisioning.recache_agent(services, body.agent_id):
        res = await services.store.dispatch_call(call_id, body.agent_id)  # the cache had lost the agent
    if res.rc is RC.NOT_FOUND:
        if res.detail == "agent":
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"agent {body.agent_id!r} does not exist")
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call_id!r} does not exist (or has ended)")
    if res.rc is not RC.OK:
        raise HTTPException(status.HTTP_409_CONFLICT, f"call {call_id!r} cannot be dispatched to agent "
                                                      f"{body.agent_id!r}: {res.detail}")
    fields = await services.store.call(call_id) or {}
    return DispatchOut(call_id=call_id, agent_id=body.agent_id, state=fields.get("state", "offered"),
                       offer_id=fields.get("offer") or None)


@router.get("/queues")
async def list_queues(services: ServicesDep,
                      limit: Annotated[int, Query(ge=0, le=10_000, description="call ids per queue")] = 100,
                      ) -> list[QueueOut]:
    """Every flow of the cache with its waiting calls, next served first."""
    keys = services.store.keys
    flow_ids = sorted(_text(m) for m in await services.redis.smembers(keys.flows))
    async with services.redis.pipeline(transaction=False) as pipe:
        for flow_id in flow_ids:
            pipe.hmget(keys.flow(flow_id), ["skill", "priority"])
            for queue in (keys.queue(flow_id), keys.chat_queue(flow_id)):
                pipe.zcard(queue)
                pipe.zrange(queue, 0, limit - 1)
        raw = await pipe.execute()
    out = []
    for i, flow_id in enumerate(flow_ids):
        (skill, priority), waiting, calls, chats_waiting, chats = raw[5 * i:5 * i + 5]
        out.append(QueueOut(flow_id=flow_id, skill=_text(skill) if skill else "",
                            priority=_int(_text(priority) if priority else None, 256) or 0,
                            waiting=int(waiting), calls=[_text(c) for c in calls] if limit else [],
                            chats_waiting=int(chats_waiting), chats=[_text(c) for c in chats] if limit else []))
    return out
