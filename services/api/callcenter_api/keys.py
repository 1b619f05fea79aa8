"""API keys in SQL (`callcenter.db.models.ApiKey`): create, list, revoke, look up, mark as used.

A key reads `cck_<id>_<secret>`: `id` (12 hex digits) is public and names the row; `secret` is 32
random bytes (256 bits, URL-safe base64) whose SHA-256 is all that is stored. A fast hash is the
right one here: the secret is random and long, so there is nothing to guess a dictionary for (a
slow password hash would only cost every request time). Functions take a SQLAlchemy Session and
run inside the caller's transaction; the plain key exists only in `create`'s return value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from callcenter.db.models import ROLES, ApiKey, utcnow

PREFIX = "cck"


@dataclass(frozen=True)
class KeyRecord:
    """What the api remembers of a key between requests (no secret, only its digest)."""

    id: str
    name: str
    role: str
    agent_id: str | None
    secret_sha256: str
    revoked: bool


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def matches(record: KeyRecord, secret: str) -> bool:
    return hmac.compare_digest(record.secret_sha256, digest(secret))


def create(session: Session, *, name: str, role: str, agent_id: str | None = None) -> tuple[ApiKey, str]:
    """A new key row and the plain key (shown once). An agent key needs an agent id, others none."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if (role == "agent") != (agent_id is not None):
        raise ValueError("an agent key needs an agent id; admin and supervisor keys take none")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = ApiKey(id=key_id, name=name, role=role, agent_id=agent_id, secret_sha256=digest(secret),
                 created_at=utcnow())
    session.add(row)
    session.flush()
    return row, f"{PREFIX}_{key_id}_{secret}"


def listed(session: Session, after: tuple[datetime, str] | None = None, limit: int | None = None) -> list[ApiKey]:
    """Keys oldest first; `after`: only those after this (created_at, id); at most `limit`."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id).limit(limit)
    if after is not None:
        at, key_id = after
        query = query.where(or_(ApiKey.created_at > at, and_(ApiKey.created_at == at, ApiKey.id > key_id)))
    return list(session.scalars(query))


def active_count(session: Session, role: str | None = None) -> int:
    query = select(ApiKey.id).where(ApiKey.revoked_at.is_(None))
    if role is not None:
        query = query.where(ApiKey.role == role)
    return len(list(session.scalars(query)))


def revoke(session: Session, key_id: str) -> ApiKey | None:
    """Mark the key revoked (idempotent); None when there is no such key."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def record(session: Session, key_id: str) -> KeyRecord | None:
    row = session.get(ApiKey, key_id)
    if row is None:
        return None
    return KeyRecord(id=row.id, name=row.name, role=row.role, agent_id=row.agent_id,
                     secret_sha256=row.secret_sha256, revoked=row.revoked_at is not None)


def mark_used(session: Session, used: dict[str, datetime]) -> None:
    """Write the last-used times gathered since the last write (one UPDATE per key)."""
    for key_id, when in used.items():
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))
