"""Who is calling and what it may do: API keys, browser tokens, roles, and the denials as problems.

A request carries `Authorization: Bearer <credential>`; the credential is an API key
(`cck_<id>_<secret>`, see `callcenter_api.keys`) or a token minted from one (`POST /v1/tokens`: a
JWT, HS256, with an expiry, for one agent). Roles:

- `admin`: everything;
- `supervisor`: reads of agents, flows, calls, queues, statistics, CDRs and the event feed, and the
  agents' state (login, logout, pause, unpause, release) and call dispatch; no provisioning, config,
  keys or dead letters;
- `agent` (bound to one agent id): its own agent's state and login/logout/pause/unpause, its own
  calls, its own events, tokens for itself; nothing else.

`POLICY` says, per operation (`METHOD /path/{template}`), which roles may call it and how an agent
key is held to its own agent; an operation missing from it is for admins only. Reads: the
`api_keys` table (cached a few seconds per process, so a revocation by another replica takes effect
within `CACHE_S`); writes: `last_used_at`, at most once a minute per key and process. Denials raise
`AuthError`, which `auth_problem` turns into an RFC 9457 problem (401 or 403) with a stable `type`.
No credential is ever logged; only a key's public id is.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import jwt
import structlog
from fastapi import Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from callcenter.db.models import utcnow
from callcenter.settings import ApiSettings
from callcenter_api import keys
from callcenter_api.errors import PROBLEM_TYPES

log = structlog.get_logger(__name__)

T = TypeVar("T")
Sql = Callable[[Callable[[Session], T]], Awaitable[T]]

# the problem `type` of every denial is the api's problem base plus a stable slug
PROBLEM_BASE = PROBLEM_TYPES
CACHE_S = 5.0  # how long a key's row is trusted before it is read again
LAST_USED_EVERY_S = 60.0
TOKEN_ALGORITHM = "HS256"
TOKEN_AUDIENCE = "callcenter-api"

AgentRule = Literal["own", "self"]  # own: the path's {agent_id} must be the key's; self: the route filters


@dataclass(frozen=True)
class Rule:
    """Who may call one operation: the roles, and how an agent key gets in (its own agent only)."""

    roles: frozenset[str]
    agent: AgentRule | None = None  # how an agent key is allowed in (None: it is not)


def _rule(*roles: str, agent: AgentRule | None = None) -> Rule:
    return Rule(frozenset(roles) | ({"agent"} if agent else set()), agent)


ADMIN = _rule("admin")
READ = _rule("admin", "supervisor")
AGENT_OWN = _rule("admin", "supervisor", agent="own")

POLICY: dict[str, Rule] = {
    "POST /v1/reload": ADMIN,
    "GET /v1/flows": READ,
    "GET /v1/flows/{flow_id}": READ,
    "PUT /v1/flows/{flow_id}": ADMIN,
    "DELETE /v1/flows/{flow_id}": ADMIN,
    "GET /v1/agents": READ,
    "GET /v1/agents/{agent_id}": AGENT_OWN,
    "PUT /v1/agents/{agent_id}": ADMIN,
    "DELETE /v1/agents/{agent_id}": ADMIN,
    "GET /v1/agents/{agent_id}/sip": AGENT_OWN,
    "PUT /v1/agents/{agent_id}/sip": ADMIN,
    "DELETE /v1/agents/{agent_id}/sip": ADMIN,
    "POST /v1/agents/{agent_id}/login": AGENT_OWN,
    "POST /v1/agents/{agent_id}/logout": AGENT_OWN,
    "POST /v1/agents/{agent_id}/pause": AGENT_OWN,
    "POST /v1/agents/{agent_id}/unpause": AGENT_OWN,
    "POST /v1/agents/{agent_id}/release": READ,
    "GET /v1/calls": _rule("admin", "supervisor", agent="self"),
    "GET /v1/calls/{call_id}": _rule("admin", "supervisor", agent="self"),
    "POST /v1/calls/{call_id}/dispatch": READ,
    "GET /v1/queues": READ,
    "GET /v1/cdrs": READ,
    "GET /v1/config": ADMIN,
    "PATCH /v1/config": ADMIN,
    "GET /v1/stats": READ,
    "POST /v1/stats/reset": ADMIN,
    "GET /v1/service-level": READ,
    "GET /v1/reports/intervals": READ,
    "GET /v1/events": _rule("admin", "supervisor", agent="self"),
    "POST /v1/tokens": _rule("admin", agent="self"),
}


@dataclass(frozen=True)
class Principal:
    """The caller: its role, the agent an agent key or token is bound to, the key it comes from."""

    role: str
    agent_id: str | None
    key_id: str
    via: Literal["key", "token", "auth-off"]


class AuthError(Exception):
    """A denial: 401 (who are you?) or 403 (not allowed), with a stable slug and a clear detail."""

    def __init__(self, status_code: int, slug: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status_code, self.slug, self.title, self.detail = status_code, slug, title, detail

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug


def unauthenticated(slug: str, detail: str) -> AuthError:
    return AuthError(status.HTTP_401_UNAUTHORIZED, slug, "authentication required", detail)


def forbidden(slug: str, detail: str) -> AuthError:
    return AuthError(status.HTTP_403_FORBIDDEN, slug, "forbidden", detail)


async def auth_problem(_request: Request, exc: Exception) -> JSONResponse:
    """The exception handler for AuthError (registered by `create_app`): application/problem+json."""
    if not isinstance(exc, AuthError):  # registered for AuthError only; the signature is Starlette's
        raise exc
    headers = {"WWW-Authenticate": 'Bearer realm="callcenter"'} if exc.status_code == 401 else None
    return JSONResponse({"type": exc.type, "title": exc.title, "status": exc.status_code, "detail": exc.detail},
                        status_code=exc.status_code, headers=headers, media_type="application/problem+json")


def operation(request: Request) -> str:
    """`METHOD /path/{template}` of the matched route (the key of POLICY)."""
    route = request.scope.get("route")
    path = getattr(route, "path_format", request.url.path)
    return f"{request.method} {path}"


def authorize(principal: Principal, request: Request) -> None:
    """Raise AuthError unless `principal` may call the request's operation."""
    op = operation(request)
    rule = POLICY.get(op, ADMIN)
    if principal.role not in rule.roles:
        allowed = " or ".join(sorted(rule.roles))
        raise forbidden("role-forbidden", f"{op} needs a key with role {allowed}; this key's role is "
                                          f"{principal.role}")
    if principal.role == "agent" and rule.agent == "own":
        target = request.path_params.get("agent_id")
        if target != principal.agent_id:
            raise forbidden("other-agent", f"this key acts for agent {principal.agent_id!r} only, "
                                           f"not for agent {target!r}")


class Authenticator:
    """Checks credentials against the api_keys table (through `sql`) and signs and checks tokens."""

    def __init__(self, settings: ApiSettings, sql: Sql[Any]) -> None:
        self.enabled = settings.api_auth == "on"
        self.sql = sql
        secret = settings.api_token_secret
        self.token_secret = secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
        self.token_max_ttl_s = settings.api_token_max_ttl_s
        self.tenant = settings.tenant
        self._cache: dict[str, tuple[float, keys.KeyRecord | None]] = {}
        self._written: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        if settings.api_token_secret is None:
            log.info("api.token_secret_random", note="tokens are valid on this process only (CC_API_TOKEN_SECRET)")

    async def principal(self, request: Request) -> Principal:
        """The caller of `request`, or AuthError (401)."""
        if not self.enabled:
            return Principal(role="admin", agent_id=None, key_id="-", via="auth-off")
        header = request.headers.get("authorization")
        if not header:
            raise unauthenticated("missing-credentials", "no Authorization header: send "
                                  "'Authorization: Bearer <API key or token>'")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise unauthenticated("missing-credentials", "the Authorization header must read "
                                  "'Bearer <API key or token>'")
        if credential.count(".") == 2:
            return await self._from_token(credential)
        return await self._from_key(credential)

    async def record(self, key_id: str) -> keys.KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        found: keys.KeyRecord | None = await self.sql(lambda s: keys.record(s, key_id))
        self._cache[key_id] = (now, found)
        return found

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after a revocation through this process)."""
        self._cache.pop(key_id, None)

    async def _from_key(self, credential: str) -> Principal:
        parts = keys.split(credential)
        if parts is None:
            raise unauthenticated("invalid-credentials", "the bearer credential is neither an API key "
                                  "(cck_<id>_<secret>) nor a token")
        key_id, secret = parts
        rec = await self.record(key_id)
        if rec is None or not keys.matches(rec, secret):
            raise unauthenticated("invalid-credentials", f"API key {key_id!r} is unknown or its secret is wrong")
        if rec.revoked:
            raise unauthenticated("revoked-key", f"API key {key_id!r} ({rec.name}) was revoked")
        self._note_use(key_id)
        return Principal(role=rec.role, agent_id=rec.agent_id, key_id=key_id, via="key")

    async def _from_token(self, credential: str) -> Principal:
        try:
            claims = jwt.decode(credential, self.token_secret, algorithms=[TOKEN_ALGORITHM], audience=TOKEN_AUDIENCE,
                                options={"require": ["exp", "sub", "kid", "ten"]})
        except jwt.ExpiredSignatureError:
            raise unauthenticated("expired-token", "the token has expired: mint a new one (POST /v1/tokens)") from None
        except jwt.PyJWTError as exc:
            raise unauthenticated("invalid-credentials", f"the token is not valid here: {exc}") from None
        if claims["ten"] != self.tenant:
            raise unauthenticated("invalid-credentials", "the token is for another tenant")
        rec = await self.record(str(claims["kid"]))
        if rec is None or rec.revoked:
            raise unauthenticated("revoked-key", f"the key {claims['kid']!r} that minted this token was revoked")
        self._note_use(rec.id)
        return Principal(role="agent", agent_id=str(claims["sub"]), key_id=rec.id, via="token")

    def mint(self, principal: Principal, agent_id: str, ttl_s: int) -> tuple[str, datetime]:
        """A token for `agent_id` that expires in `ttl_s` (capped by api_token_max_ttl_s)."""
        expires = utcnow() + timedelta(seconds=min(ttl_s, self.token_max_ttl_s))
        claims = {"sub": agent_id, "kid": principal.key_id, "ten": self.tenant, "aud": TOKEN_AUDIENCE,
                  "iat": int(time.time()), "exp": int(expires.timestamp())}
        return jwt.encode(claims, self.token_secret, algorithm=TOKEN_ALGORITHM), expires

    def _note_use(self, key_id: str) -> None:
        # last-used time: one SQL write per key and minute at most, in the background
        now = time.monotonic()
        if now - self._written.get(key_id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
            return
        self._written[key_id] = now
        when = datetime.now(UTC)
        task = asyncio.create_task(self._write_used(key_id, when))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_used(self, key_id: str, when: datetime) -> None:
        try:
            await self.sql(lambda s: keys.mark_used(s, {key_id: when}))
        except Exception as exc:  # a missed last-used time is not worth failing a request for
            log.warning("api.key_last_used_not_written", key_id=key_id, error=repr(exc))

    async def close(self) -> None:
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
