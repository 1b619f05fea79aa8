"""SQL models: the durable home of provisioning (flows, agents) and of call detail records.

Read and written by the api (flows, agents, API keys; CDR queries) and written by the cdr-writer (CDRs).
Redis holds a cache of flows and agents plus all runtime state; the api re-seeds that cache from
these tables at start-up. The schema itself is created by the Alembic migrations in
`callcenter.db.migrations` (`callcenter.db.engine.upgrade`), never by `create_all`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# stable constraint names, so that later migrations can refer to them on every dialect
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

# not_connected: the row of an agent attempt that did not connect (attempt >= 1), not a call's end
OUTCOMES = ("answered", "abandoned", "rejected", "failed", "dissuaded", "overflowed", "not_connected")
ATTEMPT_OUTCOME = "not_connected"
# the reference's cc_cdrs.call_type: -2 an agent attempt that did not connect (an intermediate
# row), -1 an error, 0 handled by an agent, 1 dropped before an agent answered
CALL_TYPE_ATTEMPT, CALL_TYPE_ERROR, CALL_TYPE_ANSWERED, CALL_TYPE_DROPPED = -2, -1, 0, 1
# the reference's cc_cdrs.fstats bits
FSTATS_INBOUND, FSTATS_DISTRIBUTED, FSTATS_ANSWERED, FSTATS_ABANDONED = 1, 2, 4, 8
# who an API key speaks for (see services/api/callcenter_api/auth.py for what each may do)
ROLES = ("admin", "supervisor", "agent")


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores `timestamptz`; SQLite and MySQL/MariaDB have no timezone type, so the value is
    stored as naive UTC (MySQL: DATETIME, whole seconds, as the reference's `received_timestamp`) and
    the tzinfo is put back on read. Naive datetimes are refused: they are always a bug.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name in ("sqlite", "mysql") else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp: datetime = value
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


# BIGINT on PostgreSQL (many CDRs); SQLite only auto-increments an "INTEGER PRIMARY KEY"
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """The declarative base of every table, with the constraint naming convention Alembic relies on."""

    metadata = MetaData(naming_convention=NAMING)


class Flow(Base):
    """A flow (queue): what a caller dials. Mirrors the reference's `cc_flows`."""

    __tablename__ = "flows"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    skill: Mapped[str] = mapped_column(String(64))
    # 0 is the highest priority: a lower number is served first
    priority: Mapped[int] = mapped_column(Integer, default=256, server_default="256")
    welcome_uri: Mapped[str | None] = mapped_column(String(255))
    queue_uri: Mapped[str] = mapped_column(String(255))
    dissuading_uri: Mapped[str | None] = mapped_column(String(255))
    prepend_cid: Mapped[str | None] = mapped_column(String(32))
    # cap on the wrap-up after calls of this flow; 0 = no cap
    max_wrapup_s: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # routing (migration 0002): strategy, maximum wait and overflow, dissuading, service level
    strategy: Mapped[str] = mapped_column(String(32), default="longest-idle", server_default="longest-idle")
    # 0 = no maximum wait; then the call overflows to overflow_flow, else to overflow_uri
    max_wait_s: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    overflow_flow: Mapped[str | None] = mapped_column(String(64))
    overflow_uri: Mapped[str | None] = mapped_column(String(255))
    # after the dissuading media: hang up (true) or go back to the queue (false)
    dissuading_hangup: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # dissuading thresholds: queue size (calls), estimated wait (s), time on hold (s); 0 = off
    dissuading_qsize_th: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    dissuading_ewt_th: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    dissuading_onhold_th: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # service-level threshold T (s); 0 = the global sl_threshold_s (20)
    sl_threshold_s: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the flow-id message played to the agent before the caller is connected (message_flow_id)
    flow_id_uri: Mapped[str | None] = mapped_column(String(255))
    # balancing | full-load; None = the global chat_dispatch_policy
    chat_policy: Mapped[str | None] = mapped_column(String(16))
    # a connected call of this flow is hung up after this long (CDR reason max_duration); 0 = no limit
    max_call_duration_s: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow,
                                                 server_default=func.now())


class Agent(Base):
    """An agent's definition (runtime state lives in Redis only). Mirrors `cc_agents`.

    `skills` is a comma-separated string, as in the reference table and in the Redis agent hash
    that the Lua scripts split: one format everywhere, portable to every SQL dialect, and skill
    names are validated by the api to never contain a comma. Use `skill_list` in Python.
    """

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # audio SIP URI (location); None = a chat-only agent. An agent has uri, chat_uri or both.
    uri: Mapped[str | None] = mapped_column(String(255))
    # MSRP-capable SIP URI (msrp_location); None = takes no chats
    chat_uri: Mapped[str | None] = mapped_column(String(255))
    # chats at once (msrp_max_sessions); None = the global chat_capacity
    chat_capacity: Mapped[int | None] = mapped_column(Integer)
    skills: Mapped[str] = mapped_column(String(1024))
    # None = the global wrap-up time (CC_WRAPUP_S)
    wrapup_s: Mapped[int | None] = mapped_column(Integer)
    # missed offers in a row before a pause with reason no-answer; None = the global value, 0 = never
    max_no_answer: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow,
                                                 server_default=func.now())

    @property
    def skill_list(self) -> list[str]:
        return [s.strip() for s in self.skills.split(",") if s.strip()]


class Cdr(Base):
    """Call detail records with the reference's meaning (`cc_cdrs`): one final row per call (attempt
    0, from `call.ended`) plus one row per agent attempt that did not connect (attempt 1, 2, ...,
    from `call.agent_failed`: that agent, `pickup_ms` = its ringing time, outcome `not_connected`,
    `reason` = why, `rejections` = the call's rejections before it, call_type -2).

    The reference's columns: caller, received_at (received_timestamp), wait_ms, pickup_ms, talk_ms
    (in ms, not s), flow_id, agent_id, call_type, rejections (rejected), fstats, media_type (media),
    and `call_id` for its `cid` (the link between the rows of one call; ours is unique for ever, not a
    per-process counter). `(call_id, attempt)` is the idempotency key: a redelivered event never
    writes a second row.
    """

    __tablename__ = "cdrs"
    __table_args__ = (
        CheckConstraint("outcome IN (" + ", ".join(f"'{o}'" for o in OUTCOMES) + ")", name="outcome"),
        CheckConstraint("wait_ms >= 0 AND pickup_ms >= 0 AND talk_ms >= 0 AND rejections >= 0",
                        name="non_negative"),
        CheckConstraint("attempt >= 0 AND (hold_ms IS NULL OR hold_ms >= 0)", name="attempt"),
        UniqueConstraint("call_id", "attempt"),
        Index("ix_cdrs_received_at", "received_at"),
        Index("ix_cdrs_flow_id_received_at", "flow_id", "received_at"),
        Index("ix_cdrs_agent_id_received_at", "agent_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(String(128))
    # 0 = the call's final row; n >= 1 = its n-th agent attempt that did not connect
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    flow_id: Mapped[str] = mapped_column(String(64))
    caller: Mapped[str] = mapped_column(String(255))
    agent_id: Mapped[str | None] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    wait_ms: Mapped[int] = mapped_column(BigInteger)
    pickup_ms: Mapped[int] = mapped_column(BigInteger)
    talk_ms: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))
    # who hung up (caller, agent, media, edge, system) and why
    ended_by: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(128))
    rejections: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(8), default="audio", server_default="audio")
    # the events stream entry the row came from (traceability, replays)
    event_id: Mapped[str] = mapped_column(String(64))
    call_type: Mapped[int] = mapped_column(Integer, default=CALL_TYPE_ERROR, server_default=str(CALL_TYPE_ERROR))
    fstats: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tenant: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    sip_call_id: Mapped[str | None] = mapped_column(String(255))
    edge: Mapped[str | None] = mapped_column(String(128))
    priority: Mapped[int | None] = mapped_column(Integer)
    # calls ahead when the call first entered a queue; None = it never queued
    queue_position: Mapped[int | None] = mapped_column(Integer)
    # final rows: from the first entry into a queue until an agent took the call or it ended
    hold_ms: Mapped[int | None] = mapped_column(BigInteger)
    # final rows: the dissuading rule it met (queue_size, ewt, on_hold), the flow or URI it overflowed to
    dissuaded_rule: Mapped[str | None] = mapped_column(String(16))
    overflow_to_flow: Mapped[str | None] = mapped_column(String(64))
    overflow_to_uri: Mapped[str | None] = mapped_column(String(255))


class ApiKey(Base):
    """An API key of the api: its public id, name, role and the SHA-256 of its secret (the secret
    itself is shown once, at creation, and never stored). An `agent` key is bound to one agent id.
    A revoked key keeps its row (revoked_at set), so the list tells who had access and when.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN (" + ", ".join(f"'{r}'" for r in ROLES) + ")", name="role"),
        CheckConstraint("(role = 'agent' AND agent_id IS NOT NULL) OR (role <> 'agent' AND agent_id IS NULL)",
                        name="agent_binding"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    agent_id: Mapped[str | None] = mapped_column(String(128))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, server_default=func.now())
    # written at most once a minute per key and api process, not on every request
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


# the celery jobs' tables live in their own module, on the same metadata (migration 0005)
from callcenter.db import jobs as _jobs  # noqa: E402, F401


class AgentSip(Base):
    """An agent's SIP registration settings: its digest credentials, stored as HA1 per algorithm
    (H(agent_id:realm:password), never the password), and whether it may log in only while
    registered. The api caches them in Redis (`cc:{t}:sipauth:<agent>`) for the sip-edges."""

    __tablename__ = "agent_sip"

    agent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    realm: Mapped[str | None] = mapped_column(String(128))
    ha1_md5: Mapped[str | None] = mapped_column(String(32))
    ha1_sha256: Mapped[str | None] = mapped_column(String(64))
    registration_required: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow,
                                                 server_default=func.now())
