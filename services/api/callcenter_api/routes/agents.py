"""/v1/agents: agent provisioning (SQL + Redis cache) and login/logout (atomic Lua steps).

Login and logout run `agent_login.lua` / `agent_logout.lua`, which emit `agent.logged_in`,
`agent.logged_out` and `agent.state_changed` on the events stream; a login may hand the agent a
waiting call in the same step (then `call.offered` and a `command.ring` to the call's sip-edge).
Pause, unpause and force release run `agent_pause.lua`, `agent_unpause.lua` and
`agent_release.lua` (events `agent.paused`, `agent.unpaused`, `agent.released`; a release of an
agent in a call sends `command.hangup` to the call's sip-edge).

An agent's GET and PUT answer the `ETag` of its definition; a PUT with `If-Match` is refused (412)
when the definition changed since (`callcenter_api.versions`). The list is paged by cursor, by id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status

from callcenter.db.models import Agent
from callcenter.store import RC, Result
from callcenter.store.codes import refuse_on
from callcenter.store.reads import AgentView
from callcenter_api import agent_sip, paging, provisioning
from callcenter_api.deps import Services, ServicesDep
from callcenter_api.schemas import (
    AGENT_ID_PATTERN,
    AgentIn,
    AgentLive,
    AgentOut,
    AgentSipIn,
    AgentSipOut,
    AgentStateOut,
    LoginOut,
    LogoutOut,
    Page,
    PauseIn,
    PauseOut,
)
from callcenter_api.versions import ETAG_HEADER, IfMatch, etag, precondition

router = APIRouter(prefix="/v1/agents", tags=["agents"])

AgentId = Annotated[str, Path(pattern=AGENT_ID_PATTERN, description="agent id: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")]


def agent_out(agent: Agent, live: AgentView | None) -> AgentOut:
    """The SQL row with the live state of the Redis cache (None: the cache does not hold the agent)."""
    return AgentOut(id=agent.id, uri=agent.uri, chat_uri=agent.chat_uri, chat_capacity=agent.chat_capacity,
                    skills=agent.skill_list, wrapup_s=agent.wrapup_s, max_no_answer=agent.max_no_answer,
                    state=live.state if live else "logged_out", created_at=agent.created_at,
                    updated_at=agent.updated_at, live=AgentLive.model_validate(live) if live else None)


def _no_such_agent(agent_id: str) -> str:
    return f"agent {agent_id!r} does not exist"


@router.get("", name="list")
async def list_agents(services: ServicesDep, cursor: paging.Cursor = None,
                      limit: paging.Limit = paging.DEFAULT_LIMIT) -> Page[AgentOut]:
    """Agents by id, with their live state."""
    query = paging.by_id(Agent, cursor, limit)
    agents = await services.sql(lambda s: list(s.scalars(query)))
    shown = agents[:limit]
    views = await services.reads.agents([agent.id for agent in shown])
    return Page(items=[agent_out(agent, view) for agent, view in zip(shown, views, strict=True)],
                next_cursor=paging.next_cursor(agents, limit, lambda a: [a.id]))


@router.get("/{agent_id}", name="get", responses={200: {"headers": ETAG_HEADER}})
async def get_agent(agent_id: AgentId, services: ServicesDep, response: Response) -> AgentOut:
    agent = await services.sql(lambda s: s.get(Agent, agent_id))
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _no_such_agent(agent_id))
    response.headers["ETag"] = etag(agent)
    return agent_out(agent, await services.reads.agent(agent_id))


@router.put("/{agent_id}", name="update",
            responses={201: {"description": "created", "headers": ETAG_HEADER},
                       200: {"description": "replaced", "headers": ETAG_HEADER},
                       412: {"description": "If-Match does not name the agent's current version"}})
async def put_agent(agent_id: AgentId, body: AgentIn, services: ServicesDep, response: Response,
                    if_match: IfMatch = None) -> AgentOut:
    """Create or replace an agent. With If-Match, only if it is still at that version (its ETag)."""
    agent, created = await provisioning.put_agent(services, agent_id, body.model_dump(),
                                                  precondition(if_match, f"agent {agent_id!r}"))
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["ETag"] = etag(agent)
    return agent_out(agent, await services.reads.agent(agent_id))


@router.delete("/{agent_id}", name="delete", status_code=status.HTTP_204_NO_CONTENT,
               responses={409: {"description": "the agent is logged in"}})
async def delete_agent(agent_id: AgentId, services: ServicesDep) -> None:
    if not await provisioning.delete_agent(services, agent_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, _no_such_agent(agent_id))
    await agent_sip.forget(services, agent_id)


async def _sip_out(services: Services, agent_id: str, row: object) -> AgentSipOut:
    realm = getattr(row, "realm", None)
    return AgentSipOut(agent_id=agent_id, realm=realm, password_set=bool(getattr(row, "ha1_sha256", None)),
                       registration_required=bool(getattr(row, "registration_required", False)),
                       contacts=await agent_sip.contacts(services, agent_id))  # type: ignore[arg-type]


@router.get("/{agent_id}/sip", name="get_sip")
async def get_sip(agent_id: AgentId, services: ServicesDep) -> AgentSipOut:
    """The agent's SIP registration settings and its live registered contacts. Its password is never
    shown, nor any hash of it."""
    if await services.sql(lambda s: s.get(Agent, agent_id)) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _no_such_agent(agent_id))
    return await _sip_out(services, agent_id, await agent_sip.get(services, agent_id))


@router.put("/{agent_id}/sip", name="put_sip")
async def put_sip(agent_id: AgentId, body: AgentSipIn, services: ServicesDep) -> AgentSipOut:
    """Set or rotate the agent's SIP password (the digest username is the agent id, the realm
    CC_SIP_REALM; only H(agent:realm:password) per algorithm is kept) and/or whether it may log in
    only while registered. A rotation holds for the next REGISTER; live registrations stay."""
    row = await agent_sip.put(services, agent_id, body.password, body.registration_required)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _no_such_agent(agent_id))
    return await _sip_out(services, agent_id, row)


@router.delete("/{agent_id}/sip", name="delete_sip", status_code=status.HTTP_204_NO_CONTENT)
async def delete_sip(agent_id: AgentId, services: ServicesDep) -> None:
    """Remove the agent's SIP password and setting: its REGISTERs fail from now on."""
    if not await agent_sip.forget(services, agent_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"agent {agent_id!r} has no SIP settings")


Step = Callable[[str], Awaitable[Result]]


async def _run_on_agent(services: Services, agent_id: str, step: Step) -> Result:
    """Run a Lua step on an agent; if the cache lost the agent (Redis restarted empty), put it back
    from SQL and try once more, so an agent known to SQL never gets a 404."""
    res = await step(agent_id)
    if res.rc is RC.NOT_FOUND and await provisioning.recache_agent(services, agent_id):
        res = await step(agent_id)
    return refuse_on(res, RC.NOT_FOUND, message=_no_such_agent(agent_id))


@router.post("/{agent_id}/login", name="login")
async def login(agent_id: AgentId, services: ServicesDep) -> LoginOut:
    res = await _run_on_agent(services, agent_id, services.store.agent_login)
    refuse_on(res, RC.INVALID, message=f"agent {agent_id!r} must be registered to log in (its setting "
              "registration_required): REGISTER its AOR first")
    return LoginOut(agent_id=agent_id, state=res.detail, already=res.rc is RC.ALREADY)


@router.post("/{agent_id}/logout", name="logout")
async def logout(agent_id: AgentId, services: ServicesDep) -> LogoutOut:
    res = await _run_on_agent(services, agent_id, services.store.agent_logout)
    return LogoutOut(agent_id=agent_id, state=res.detail, already=res.rc is RC.ALREADY)  # type: ignore[arg-type]


@router.post("/{agent_id}/pause", name="pause", responses={404: {"description": "unknown agent"},
                                             409: {"description": "the agent is not logged in"}})
async def pause(agent_id: AgentId, body: PauseIn, services: ServicesDep) -> PauseOut:
    """Pause a logged-in agent with a reason code: at once when free or in wrap-up; when ringing or in
    a call, `pending` until that call ends (then without wrap-up). A paused agent stays logged in and
    gets no calls. Pausing a paused agent with another reason changes the reason."""
    res = await _run_on_agent(services, agent_id, lambda a: services.store.agent_pause(a, body.reason))
    refuse_on(res, RC.INVALID, message=f"agent {agent_id!r} cannot be paused: {res.detail}")
    already = res.rc is RC.ALREADY
    return PauseOut(agent_id=agent_id, state="paused" if already else res.detail,  # type: ignore[arg-type]
                    reason=body.reason, already=already)


@router.post("/{agent_id}/unpause", name="unpause")
async def unpause(agent_id: AgentId, services: ServicesDep) -> AgentStateOut:
    """End the agent's pause, or cancel a pending one. A free agent takes a waiting call in the same
    step (state `ringing`). `already: true` when the agent was not paused."""
    res = await _run_on_agent(services, agent_id, services.store.agent_unpause)
    return AgentStateOut(agent_id=agent_id, state=res.detail or "logged_out", already=res.rc is RC.ALREADY)


@router.post("/{agent_id}/release", name="release")
async def release(agent_id: AgentId, services: ServicesDep) -> AgentStateOut:
    """Free an agent by force (administrator): a live call it holds is hung up (`command.hangup` to the
    call's sip-edge; CDR outcome failed, reason force_release); a ringing offer is withdrawn; wrap-up
    ends. The agent is then free (it may take a waiting call at once), or logged out / paused if that
    was pending. `already: true` when the agent was not ringing, in a call or in wrap-up."""
    res = await _run_on_agent(services, agent_id, services.store.agent_release)
    return AgentStateOut(agent_id=agent_id, state=res.detail or "logged_out", already=res.rc is RC.ALREADY)
