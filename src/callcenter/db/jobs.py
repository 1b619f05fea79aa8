"""SQL tables of the celery jobs (services/jobs): webhook subscriptions and deliveries, 15-minute
interval reports, CDR exports. Written by the jobs (deliveries, reports, exports) and by the api
(subscriptions, replays, export requests); the api reads them all. Migrations 0006 and 0007 (an
export's file in chunks).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

from callcenter.db.models import Base, UtcDateTime, utcnow

DELIVERY_STATES = ("pending", "queued", "delivered", "dead")
EXPORT_STATES = ("pending", "running", "done", "failed")
EXPORT_FORMATS = ("csv", "jsonl")
REPORT_KINDS = ("flow", "agent")


class WebhookSubscription(Base):
    """Where to POST which event types, and the secret that signs each delivery."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[str] = mapped_column(Text)  # comma-separated; `*` = every type
    secret: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event for one subscription: pending (to queue), queued (a worker has it), delivered or dead."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("subscription_id", "event_id"), Index("ix_webhook_deliveries_status", "status"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the JSON body, signed as sent
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class IntervalReport(Base):
    """One 15-minute roll-up of one flow or one agent, from the CDRs received in that interval."""

    __tablename__ = "interval_reports"

    interval_start: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)   # flow | agent
    key: Mapped[str] = mapped_column(String(128), primary_key=True)  # the flow id or agent id
    offered: Mapped[int] = mapped_column(Integer)
    answered: Mapped[int] = mapped_column(Integer)
    abandoned: Mapped[int] = mapped_column(Integer)
    service_level: Mapped[float] = mapped_column(Float)  # answered within the threshold / offered
    avg_wait_ms: Mapped[int] = mapped_column(BigInteger)
    avg_talk_ms: Mapped[int] = mapped_column(BigInteger)
    occupancy: Mapped[float] = mapped_column(Float)      # agents: talk time / interval length


class CdrExport(Base):
    """A CDR export asked for through the api and made by a job: its range, format, state and file."""

    __tablename__ = "cdr_exports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    since: Mapped[datetime] = mapped_column(UtcDateTime)
    until: Mapped[datetime] = mapped_column(UtcDateTime)
    format: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class CdrExportChunk(Base):
    """A piece of an export's file, in order of `seq` (0, 1, ...): the job writes them as it reads
    the CDRs, the api streams them out; none is bigger than `EXPORT_CHUNK_BYTES` (plus one row)."""

    __tablename__ = "cdr_export_chunks"

    export_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    # up to 16 MiB (MEDIUMBLOB on MySQL/MariaDB, where a plain BLOB holds 64 KiB)
    data: Mapped[bytes] = mapped_column(LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb"))


EXPORT_CHUNK_BYTES = 256 * 1024
