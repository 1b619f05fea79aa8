"""Flows and agents: SQL (their durable home) and the Redis cache the Lua scripts read.

Reads and writes the `flows` and `agents` tables and, through `callcenter.store.Store`, the flow
and agent hashes in Redis. Writes go to SQL first (committed), then to the cache, so a cache
update that fails is repaired by the next re-seed; a flow the cache refuses for an overflow cycle
(one SQL did not show: a concurrent PUT) has its SQL write taken back. Deletes go the other way: the Lua script is
the guard (it refuses while calls wait or the agent is logged in: `StepRefused`, a 409), and only
then is the SQL row removed, so a refused delete never leaves a live flow or agent without its SQL row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from callcenter.db.models import Agent, Flow
from callcenter.store import RC, Result, Store
from callcenter.store.codes import refuse_on
from callcenter.store.config_writes import explicit_config, seed_config
from callcenter_api import agent_sip
from callcenter_api.deps import Services
from callcenter_api.errors import OverflowCycle

log = structlog.get_logger(__name__)

T = TypeVar("T")
M = TypeVar("M", Flow, Agent)

# how flow_upsert's refusal of an overflow cycle begins (INVALID 'overflow cycle: a -> b -> a')
CYCLE_REFUSAL = "overflow cycle: "

# the flow hash the Lua steps read: these names exactly (booleans as 1/0, None as '')
FLOW_FIELDS = ("skill", "priority", "welcome_uri", "queue_uri", "dissuading_uri", "prepend_cid", "max_wrapup_s",
               "strategy", "max_wait_s", "overflow_flow", "overflow_uri", "dissuading_hangup",
               "dissuading_qsize_th", "dissuading_ewt_th", "dissuading_onhold_th", "sl_threshold_s", "flow_id_uri",
               "chat_policy", "max_call_duration_s")


def flow_cache_fields(flow: Flow) -> dict[str, Any]:
    fields = {name: getattr(flow, name) for name in FLOW_FIELDS}
    return {name: int(value) if isinstance(value, bool) else value for name, value in fields.items()}


def refused_cycle(res: Result) -> list[str] | None:
    """The cycle flow_upsert refused the flow for (`INVALID 'overflow cycle: a -> b -> a'`), or None."""
    if res.rc is RC.INVALID and res.detail.startswith(CYCLE_REFUSAL):
        return res.detail[len(CYCLE_REFUSAL):].split(" -> ")  # flow ids hold no space
    return None


def overflow_cycle(session: Session, flow_id: str, overflow_flow: str | None) -> list[str] | None:
    """The cycle `flow_id` would close with this overflow_flow, following the other flows' SQL rows
    (the transaction's view), or None. The Lua step `flow_upsert` checks the same on the cache."""
    targets: dict[str, str | None] = {row.id: row.overflow_flow for row in session.execute(
        select(Flow.id, Flow.overflow_flow).where(Flow.overflow_flow.is_not(None)))}
    path, seen, hop = [flow_id], set(), overflow_flow
    while hop and hop not in seen:  # seen: a cycle elsewhere (stored before cycles were refused)
        path.append(hop)
        if hop == flow_id:
            return path
        seen.add(hop)
        hop = targets.get(hop)
    return None


async def cache_flow(store: Store, flow: Flow, break_cycle: bool = False) -> list[str] | None:
    """Write a flow to the cache; the cycle it would close, if flow_upsert refused it for one.
    With `break_cycle` (a re-seed of flows stored before cycles were refused) such a flow is cached
    without its overflow_flow instead, and logged."""
    fields = flow_cache_fields(flow)
    res = await store.flow_upsert(flow.id, fields)
    cycle = refused_cycle(res)
    if cycle is not None and break_cycle:
        log.error("flow.overflow_cycle", flow_id=flow.id, cycle=cycle, cached_without="overflow_flow")
        res = await store.flow_upsert(flow.id, {**fields, "overflow_flow": None})
        cycle = None
    if cycle is None and res.rc is not RC.OK:
        raise RuntimeError(f"flow_upsert {flow.id!r}: {res.rc.name} {res.detail}")
    return cycle


async def cache_agent(store: Store, agent: Agent) -> str:
    res = await store.agent_upsert(agent.id, agent.uri, agent.skill_list, agent.wrapup_s,
                                   max_no_answer=agent.max_no_answer, chat_uri=agent.chat_uri,
                                   chat_capacity=agent.chat_capacity)
    if res.rc is not RC.OK:
        raise RuntimeError(f"agent_upsert {agent.id!r}: {res.rc.name} {res.detail}")
    return res.detail


Precondition = Callable[[Any], None]


def _save(session: Session, model: type[M], key: str, values: dict[str, Any],
          precondition: Precondition | None = None) -> tuple[M, bool]:
    """Get-or-create the row `key` of `model` and set `values`; the row and whether it is new.
    `precondition` (If-Match, `callcenter_api.versions`) sees the current row, read for update."""
    row = session.get(model, key, with_for_update=precondition is not None)
    if precondition is not None:
        precondition(row)
    created = row is None
    if row is None:
        row = model(id=key)
        session.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    session.flush()
    return row, created


async def _delete(services: Services, model: type[Flow] | type[Agent], key: str,
                  guard: Callable[[str], Awaitable[Result]], refusal: str) -> bool:
    """The Lua guard first (it refuses a flow with waiting calls, a logged-in agent: StepRefused
    with `refusal`, formatted with the key and the guard's reason), then SQL."""
    res = await guard(key)
    refuse_on(res, RC.INVALID, message=refusal.format(key=key, reason=res.detail))

    def remove(session: Session) -> bool:
        row = session.get(model, key)
        if row is not None:
            session.delete(row)
        return row is not None

    in_sql = await services.sql(remove)
    log.info("flow.deleted" if model is Flow else "agent.deleted", id=key, in_sql=in_sql, in_cache=res.rc is RC.OK)
    return in_sql or res.rc is RC.OK


# -- flows ---------------------------------------------------------------------------------------

async def put_flow(services: Services, flow_id: str, values: dict[str, Any],
                   precondition: Precondition | None = None) -> tuple[Flow, bool]:
    """Create or replace a flow; returns it and whether it was created. OverflowCycle (nothing
    saved) when its overflow_flow chain leads back to it."""

    def write(session: Session) -> tuple[Flow, bool, dict[str, Any] | None]:
        cycle = overflow_cycle(session, flow_id, values.get("overflow_flow"))
        if cycle is not None:
            raise OverflowCycle(cycle)  # the transaction rolls back: nothing written
        old = session.get(Flow, flow_id)
        previous = None if old is None else {name: getattr(old, name) for name in values}
        return (*_save(session, Flow, flow_id, values, precondition), previous)

    flow, created, previous = await _retry_on_race(services, write)
    cycle = await cache_flow(services.store, flow)
    if cycle is not None:
        # the cache saw a cycle SQL did not (a concurrent PUT closing it, a cache written by other
        # means): take the SQL write back, so that nothing stays saved
        def undo(session: Session) -> None:
            if previous is None:
                row = session.get(Flow, flow_id)
                if row is not None:
                    session.delete(row)
            else:
                _save(session, Flow, flow_id, previous)

        await services.sql(undo)
        raise OverflowCycle(cycle)
    log.info("flow.saved", flow_id=flow_id, created=created)
    return flow, created


async def delete_flow(services: Services, flow_id: str) -> bool:
    """Delete a flow; False if it exists nowhere; StepRefused while calls wait in it."""
    return await _delete(services, Flow, flow_id, services.store.flow_delete,
                         "flow {key!r} cannot be deleted: {reason}")


# -- agents --------------------------------------------------------------------------------------

async def put_agent(services: Services, agent_id: str, values: dict[str, Any],
                    precondition: Precondition | None = None) -> tuple[Agent, bool]:
    """Create or replace an agent (values: the AgentIn fields); returns it and whether it was created."""
    values = {**values, "skills": ",".join(values["skills"])}

    def write(session: Session) -> tuple[Agent, bool]:
        return _save(session, Agent, agent_id, values, precondition)

    agent, created = await _retry_on_race(services, write)
    await cache_agent(services.store, agent)
    log.info("agent.saved", agent_id=agent_id, created=created)
    return agent, created


async def delete_agent(services: Services, agent_id: str) -> bool:
    """Delete an agent; False if it exists nowhere; StepRefused while it is logged in."""
    return await _delete(services, Agent, agent_id, services.store.agent_delete,
                         "agent {key!r} cannot be deleted: {reason}; log it out first")


async def recache_agent(services: Services, agent_id: str) -> bool:
    """Put one agent back in the cache from SQL (Redis lost it); False if SQL has no such agent."""
    agent = await services.sql(lambda s: s.get(Agent, agent_id))
    if agent is None:
        return False
    await cache_agent(services.store, agent)
    log.info("agent.recached", agent_id=agent_id)
    return True


# -- re-seed -------------------------------------------------------------------------------------

async def reseed(services: Services, prune: bool = False) -> dict[str, Any]:
    """Write every flow and agent of SQL into the Redis cache (runtime state is kept), and seed
    `cc:{t}:config` from the environment (`CC_WRAPUP_S`, ...) when it does not exist yet.

    With `prune`, cache entries that SQL does not know are removed too, except those the Lua
    guards protect (calls waiting, agent logged in). Start-up never prunes: a cache entry
    provisioned by other means (tests, a migration in progress) must not vanish on a restart.
    """

    def load(session: Session) -> tuple[list[Flow], list[Agent]]:
        return list(session.scalars(select(Flow))), list(session.scalars(select(Agent)))

    # an empty Redis gets its call-handling parameters too; an existing config is left alone (it is
    # PATCH /v1/config's), so a restart never undoes a change made through the api
    if await seed_config(services.redis, services.store.keys, explicit_config(services.settings)):
        log.info("config.seeded")
    flows, agents = await services.sql(load)
    for flow in flows:
        await cache_flow(services.store, flow, break_cycle=True)
    for agent in agents:
        await cache_agent(services.store, agent)
    await agent_sip.reseed(services)
    report: dict[str, Any] = {"flows": len(flows), "agents": len(agents), "removed_flows": [],
                              "removed_agents": [], "kept": []}
    if prune:
        sql_flows = {f.id for f in flows}
        sql_agents = {a.id for a in agents}
        for flow_id in await services.reads.flow_ids():
            if flow_id not in sql_flows:
                res = await services.store.flow_delete(flow_id)
                report["removed_flows" if res.rc is not RC.INVALID else "kept"].append(flow_id)
        for agent_id in await services.reads.agent_ids():
            if agent_id not in sql_agents:
                res = await services.store.agent_delete(agent_id)
                report["removed_agents" if res.rc is not RC.INVALID else "kept"].append(agent_id)
    log.info("cache.reseeded", **report)
    return report


async def _retry_on_race(services: Services, write: Callable[[Session], T]) -> T:
    # two concurrent PUTs creating the same id: the loser's INSERT hits the primary key; on the
    # second attempt the row exists and is updated
    try:
        return await services.sql(write)
    except IntegrityError:
        return await services.sql(write)
