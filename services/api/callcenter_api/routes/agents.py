"""/v1/agents: agent provisioning (SQL + Redis cache) and login/logout (atomic Lua steps).

Login and logout run `agent_login.lua` / `agent_logout.lua`, which emit `agent.logged_in`,
`agent.logged_out` and `agent.state_changed` on the events stream; a login may hand the agent a
waiting call in the same step (then `call.offered` and a `command.ring` to the call's sip-edge).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status
from sqlalchemy import select

from callcenter.db.models import Agent
from callcenter.store import RC, Result
from callcenter_api import provisioning
from callcenter_api.deps import Services, ServicesDep
from callcenter_api.schemas import AGENT_ID_PATTERN, AgentIn, AgentLive, AgentOut, LoginOut, LogoutOut

router = APIRouter(prefix="/v1/agents", tags=["agents"])

AgentId = Annotated[str, Path(pattern=AGENT_ID_PATTERN, description="agent id: [A-Za-z0-9_.-]{1,128}")]

def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def live_view(fields: dict[str, str] | None) -> AgentLive | None:
    if not fields:
        return None
    return AgentLive(
        state=fields.get("state") or "logged_out",
        call=fields.get("call") or None,
        logout_pending=fields.get("logout_pending") == "1",
        state_since_ms=_int(fields.get("state_since")),
        idle_since_ms=_int(fields.get("idle_since")),
        logged_in_ms=_int(fields.get("logged_in_ms")),
        wrapup_end_ms=_int(fields.get("wrapup_end_ms")),
        fields=fields,
    )


def agent_view(agent: Agent, fields: dict[str, str] | None) -> AgentOut:
    live = live_view(fields)
    return AgentOut(id=agent.id, uri=agent.uri, skills=agent.skill_list, wrapup_s=agent.wrapup_s,
                    state=live.state if live else "logged_out", created_at=agent.created_at,
                    updated_at=agent.updated_at, live=live)


def _not_found(agent_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"agent {agent_id!r} does not exist")


@router.get("")
async def list_agents(services: ServicesDep) -> list[AgentOut]:
    agents = await services.sql(lambda s: list(s.scalars(select(Agent).order_by(Agent.id))))
    async with services.redis.pipeline(transaction=False) as pipe:
        for agent in agents:
            pipe.hgetall(services.store.keys.agent(agent.id))
        hashes = await pipe.execute()
    return [agent_view(a, {_text(k): _text(v) for k, v in h.items()}) for a, h in zip(agents, hashes, strict=True)]


@router.get("/{agent_id}")
async def get_agent(agent_id: AgentId, services: ServicesDep) -> AgentOut:
    agent = await services.sql(lambda s: s.get(Agent, agent_id))
    if agent is None:
        raise _not_found(agent_id)
    return agent_view(agent, await services.store.agent(agent_id))


@router.put("/{agent_id}", responses={201: {"description": "created"}, 200: {"description": "replaced"}})
async def put_agent(agent_id: AgentId, body: AgentIn, services: ServicesDep, response: Response) -> AgentOut:
    agent, created = await provisioning.put_agent(services, agent_id, body.uri, body.skills, body.wrapup_s)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return agent_view(agent, await services.store.agent(agent_id))


@router.delete("/{agent_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={409: {"description": "the agent is logged in"}})
async def delete_agent(agent_id: AgentId, services: ServicesDep) -> None:
    try:
        found = await provisioning.delete_agent(services, agent_id)
    except provisioning.Refused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"agent {agent_id!r} cannot be deleted: {exc}; log it out first") from exc
    if not found:
        raise _not_found(agent_id)


async def _run_on_agent(services: Services, agent_id: str, step: str) -> Result:
    """Run a login/logout step; if the cache lost the agent (Redis restarted empty), put it back
    from SQL and try once more, so an agent known to SQL never gets a 404."""
    run = services.store.agent_login if step == "login" else services.store.agent_logout
    res = await run(agent_id)
    if res.rc is RC.NOT_FOUND and await provisioning.recache_agent(services, agent_id):
        res = await run(agent_id)
    if res.rc is RC.NOT_FOUND:
        raise _not_found(agent_id)
    return res


@router.post("/{agent_id}/login", responses={404: {"description": "unknown agent"}})
async def login(agent_id: AgentId, services: ServicesDep) -> LoginOut:
    res = await _run_on_agent(services, agent_id, "login")
    return LoginOut(agent_id=agent_id, state=res.detail, already=res.rc is RC.ALREADY)


@router.post("/{agent_id}/logout", responses={404: {"description": "unknown agent"}})
async def logout(agent_id: AgentId, services: ServicesDep) -> LogoutOut:
    res = await _run_on_agent(services, agent_id, "logout")
    return LogoutOut(agent_id=agent_id, state=res.detail, already=res.rc is RC.ALREADY)  # type: ignore[arg-type]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
