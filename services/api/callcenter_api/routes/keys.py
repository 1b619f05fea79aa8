"""/v1/keys (admin): API keys, created (the key is in the answer once), listed, revoked; and
/v1/tokens: short-lived tokens for browser clients, minted from a key for one agent.

Reads and writes the `api_keys` table (`callcenter_api.keys`); tokens are signed, not stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from callcenter.db.models import ApiKey
from callcenter_api import keys, paging
from callcenter_api.auth import forbidden
from callcenter_api.deps import PrincipalDep, ServicesDep
from callcenter_api.schemas import AGENT_ID_PATTERN, Page

router = APIRouter(prefix="/v1")


class KeyIn(BaseModel):
    """A new API key: its name, role and, for an agent key, its agent."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="who or what holds the key")
    role: Literal["admin", "supervisor", "agent"]
    agent_id: str | None = Field(default=None, pattern=AGENT_ID_PATTERN,
                                 description="the agent an `agent` key acts for (required then, else absent)")

    @model_validator(mode="after")
    def agent_binding(self) -> KeyIn:
        if (self.role == "agent") != (self.agent_id is not None):
            raise ValueError("an agent key needs agent_id; admin and supervisor keys take none")
        return self


class KeyOut(BaseModel):
    """An API key as listed (never the key itself)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    role: str
    agent_id: str | None
    created_at: datetime
    last_used_at: datetime | None = Field(description="to the minute: written at most once a minute")
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    """A new API key, with the key shown this once."""

    key: str = Field(description="the key itself: shown this once, stored only as a hash")


class TokenIn(BaseModel):
    """A short-lived token to mint for one agent."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = Field(default=None, pattern=AGENT_ID_PATTERN,
                                 description="the agent the token acts for; an agent key: its own (the default)")
    ttl_s: int = Field(default=900, ge=10, le=86_400, description="lifetime (capped by CC_API_TOKEN_MAX_TTL_S)")


class TokenOut(BaseModel):
    """A signed token for a browser client, and when it expires."""

    token: str
    agent_id: str
    expires_at: datetime


KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$")]


@router.post("/keys", tags=["keys"], name="create", status_code=status.HTTP_201_CREATED)
async def create_key(body: KeyIn, services: ServicesDep) -> KeyCreated:
    """A new API key; `key` in the answer is the only time it is shown."""

    def create(session: Session) -> KeyCreated:
        row, plain = keys.create(session, name=body.name, role=body.role, agent_id=body.agent_id)
        return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=plain)

    return await services.sql(create)


@router.get("/keys", tags=["keys"], name="list")
async def list_keys(services: ServicesDep, cursor: paging.Cursor = None,
                    limit: paging.Limit = paging.DEFAULT_LIMIT) -> Page[KeyOut]:
    """Every key, revoked ones too (never a secret), oldest first."""
    after = paging.decode(cursor, (str, str))
    start = (datetime.fromisoformat(after[0]), after[1]) if after is not None else None
    rows = await services.sql(lambda s: [KeyOut.model_validate(row) for row in keys.listed(s, start, limit + 1)])
    return Page(items=rows[:limit],
                next_cursor=paging.next_cursor(rows, limit, lambda k: [k.created_at.isoformat(), k.id]))


@router.delete("/keys/{key_id}", tags=["keys"], name="revoke", responses={404: {"description": "unknown key"}})
async def revoke_key(key_id: KeyId, services: ServicesDep) -> KeyOut:
    """Revoke a key (idempotent): it and the tokens minted from it stop working at once on this api
    process, within a few seconds on the others."""

    def revoke(session: Session) -> KeyOut | None:
        row: ApiKey | None = keys.revoke(session, key_id)
        return KeyOut.model_validate(row) if row is not None else None

    out = await services.sql(revoke)
    if out is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"API key {key_id!r} does not exist")
    services.auth.forget(key_id)
    return out


@router.post("/tokens", tags=["tokens"], name="create", status_code=status.HTTP_201_CREATED)
async def mint_token(body: TokenIn, principal: PrincipalDep, services: ServicesDep) -> TokenOut:
    """A short-lived token (JWT) for a browser client acting for one agent, sent as
    `Authorization: Bearer <token>` like a key. An admin key mints for any agent; an agent key for
    its own agent only; a token mints nothing."""
    if principal.via == "token":
        raise forbidden("token-cannot-mint", "a token cannot mint tokens: use an API key")
    agent_id = body.agent_id or principal.agent_id
    if agent_id is None:
        raise forbidden("agent-required", "say which agent the token is for (agent_id)")
    if principal.role == "agent" and agent_id != principal.agent_id:
        raise forbidden("other-agent", f"this key acts for agent {principal.agent_id!r} only, not for {agent_id!r}")
    token, expires = services.auth.mint(principal, agent_id, body.ttl_s)
    return TokenOut(token=token, agent_id=agent_id, expires_at=expires)
