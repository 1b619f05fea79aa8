"""Agents' SIP registration settings: SQL (`agent_sip`, the durable home) and their Redis cache.

Reads: `agent_sip` rows, `cc:{t}:aor:<agent>` and its bindings (the live registration). Writes:
`agent_sip` and `cc:{t}:sipauth:<agent>` (realm, an HA1 per algorithm, registration_required), the
hash the sip-edges verify REGISTERs with and `agent_login.lua` reads. A password is hashed here and
forgotten: only HA1s are kept, and no answer ever carries one.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from callcenter.db.models import Agent, AgentSip
from callcenter.sip_credentials import credentials
from callcenter_api.deps import Services

log = structlog.get_logger(__name__)


def _cache_fields(row: AgentSip) -> dict[Any, Any]:
    return {"realm": row.realm or "", "ha1_md5": row.ha1_md5 or "", "ha1_sha256": row.ha1_sha256 or "",
            "registration_required": "1" if row.registration_required else "0"}


async def cache(services: Services, row: AgentSip) -> None:
    """Replace the agent's cached SIP settings; an agent without a password has no HA1 (every
    REGISTER of its AOR fails as a wrong password would, and its URI is not rung as an AOR)."""
    key = services.store.keys.sip_auth(row.agent_id)
    async with services.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if row.ha1_sha256 or row.registration_required:
            pipe.hset(key, mapping=_cache_fields(row))
        await pipe.execute()


async def put(services: Services, agent_id: str, password: str | None,
              registration_required: bool | None) -> AgentSip | None:
    """Set (or rotate) the password and/or the setting; None if the agent does not exist."""
    realm = services.settings.sip_realm

    def write(session: Session) -> AgentSip | None:
        if session.get(Agent, agent_id) is None:
            return None
        row = session.get(AgentSip, agent_id)
        if row is None:
            row = AgentSip(agent_id=agent_id, registration_required=False)
            session.add(row)
        if password is not None:
            hashed = credentials(agent_id, realm, password)
            row.realm, row.ha1_md5, row.ha1_sha256 = realm, hashed["ha1_md5"], hashed["ha1_sha256"]
        if registration_required is not None:
            row.registration_required = registration_required
        session.flush()
        return row

    row = await services.sql(write)
    if row is not None:
        await cache(services, row)
        log.info("agent.sip_updated", agent_id=agent_id, password_set=password is not None,
                 registration_required=row.registration_required)
    return row


async def get(services: Services, agent_id: str) -> AgentSip | None:
    return await services.sql(lambda s: s.get(AgentSip, agent_id))


async def forget(services: Services, agent_id: str) -> bool:
    """Remove the agent's SIP settings (the agent was deleted, or they were); its live registration
    lapses by itself. True if there were any."""

    def remove(session: Session) -> bool:
        row = session.get(AgentSip, agent_id)
        if row is not None:
            session.delete(row)
        return row is not None

    existed = await services.sql(remove)
    await services.redis.delete(services.store.keys.sip_auth(agent_id))
    return existed


async def reseed(services: Services) -> int:
    """Every agent's SIP settings of SQL into the cache (an empty Redis after a restart)."""
    rows = await services.sql(lambda s: list(s.scalars(select(AgentSip))))
    for row in rows:
        await cache(services, row)
    return len(rows)


async def contacts(services: Services, agent_id: str) -> list[dict[str, Any]]:
    """The agent's live registered contacts (what the edges would ring), best first."""
    keys = services.store.keys
    now = int(time.time() * 1000)
    live: list[tuple[Any, float]] = await services.redis.zrangebyscore(  # type: ignore[assignment]
        keys.aor(agent_id), f"({now}", "+inf", withscores=True)
    raw: dict[Any, Any] = await services.redis.hgetall(keys.aor_bindings(agent_id))
    found = []
    for member, expiry in live:
        text = raw.get(member)
        if text is None:
            continue
        data = json.loads(text)
        found.append({"uri": data.get("uri"), "expires_s": max(0, (int(expiry) - now) // 1000),
                      "q": float(data.get("q") or 1.0), "instance": data.get("instance"),
                      "received": data.get("received"), "transport": data.get("transport"),
                      "path": data.get("path") or [], "edge": data.get("edge")})
    return sorted(found, key=lambda c: (-c["q"], -c["expires_s"]))
