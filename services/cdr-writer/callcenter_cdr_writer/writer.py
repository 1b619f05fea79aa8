"""The cdr-writer's handler: `call.ended` events in, one CDR row per call out.

Reads batches of decoded entries of the events stream `cc:{t}:events` (consumer group
`cdr-writer`, see `callcenter.bus.StreamConsumer`) and writes the `cdrs` table. Every other event
type is acknowledged at once: it is not a CDR. The batch's rows are inserted in one transaction
with an idempotent insert keyed by `call_id` (`ON CONFLICT (call_id) DO NOTHING` on SQLite and
PostgreSQL), so an event delivered twice (a writer that died between commit and ack, a claim by
another replica) never writes a second row. Verdicts:

- ACK   the row is committed (or was already there), or the entry is not a `call.ended`;
- DEAD  the row fails on its own (bad values: a constraint or a type the database refuses), found
        by retrying the batch row by row; the others are written;
- BACKOFF the database is unavailable: the consumer keeps the entries and offers them again with
        back-off (not counted as deliveries, so a long outage dead-letters nothing).

The SQLAlchemy work is synchronous and runs in a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine, Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from callcenter.bus import ACK, BACKOFF, Outcome, Verdict
from callcenter.contract.codec import Entry
from callcenter.db.models import Cdr

log = structlog.get_logger(__name__)

CDR_EVENT = "call.ended"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


class BadCdr(ValueError):
    """An event whose values can never become a row (dead-lettered, not retried)."""


def _count(data: Mapping[str, Any], name: str, limit: int = INT64_MAX) -> int:
    value = data[name]
    if not 0 <= value <= limit:
        raise BadCdr(f"{name}={value} is out of range")
    return int(value)


def _media_type(data: Mapping[str, Any]) -> str:
    media_type = data.get("media_type") or "audio"  # events before chat support carry none
    if media_type not in ("audio", "chat"):
        raise BadCdr(f"media_type={media_type!r} is neither audio nor chat")
    return str(media_type)


def cdr_row(entry: Entry) -> dict[str, Any]:
    """The `cdrs` row of one `call.ended` entry (types were checked by `callcenter.contract.codec`)."""
    data = entry.data
    try:
        received_at = EPOCH + timedelta(milliseconds=_count(data, "received_ms"))
    except OverflowError as exc:
        raise BadCdr(f"received_ms={data['received_ms']} is not a date") from exc
    return {
        "call_id": data["call_id"],
        "flow_id": data["flow"],
        "caller": data["caller"],
        "agent_id": data.get("agent_id") or None,
        "received_at": received_at,
        "wait_ms": _count(data, "wait_ms"),
        "pickup_ms": _count(data, "pickup_ms"),
        "talk_ms": _count(data, "talk_ms"),
        "outcome": data["outcome"],
        "ended_by": data["ended_by"],
        "reason": data["reason"],
        "rejections": _count(data, "rejections", INT32_MAX),
        "media_type": _media_type(data),
        "event_id": entry.id,
    }


def idempotent_insert(engine: Engine) -> Insert:
    """INSERT INTO cdrs ... ON CONFLICT (call_id) DO NOTHING RETURNING call_id, for the engine's dialect."""
    dialects: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
    make = dialects.get(engine.dialect.name)
    if make is None:
        raise NotImplementedError(f"the cdr-writer supports SQLite and PostgreSQL, not {engine.dialect.name}")
    stmt: Insert = make(Cdr).on_conflict_do_nothing(index_elements=[Cdr.call_id]).returning(Cdr.call_id)
    return stmt


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"[:500]


class CdrWriter:
    """A `bus.Handler`: `await writer(entries)` returns {entry_id: Verdict}."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.insert = idempotent_insert(engine)
        self.written = 0
        self.duplicates = 0
        self.dead = 0

    async def __call__(self, entries: Sequence[Entry]) -> dict[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        rows: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if entry.type != CDR_EVENT:
                verdicts[entry.id] = ACK
                continue
            try:
                rows[entry.id] = cdr_row(entry)
            except BadCdr as exc:
                verdicts[entry.id] = Verdict(Outcome.DEAD, f"bad cdr: {exc}")
        if not rows:
            return self._count(verdicts)
        try:
            inserted = await asyncio.to_thread(self._insert_batch, list(rows.values()))
        except (IntegrityError, DataError) as exc:
            log.warning("cdr.batch_refused", count=len(rows), error=_reason(exc))
            verdicts.update(await asyncio.to_thread(self._insert_one_by_one, rows))
        except SQLAlchemyError as exc:
            # the database is unavailable (or the schema is not there yet): keep everything pending
            return await self._unavailable(entries, exc)
        else:
            verdicts.update(dict.fromkeys(rows, ACK))
            self._note_written(len(rows), inserted)
        return self._count(verdicts)

    # -- SQL (worker thread) ------------------------------------------------------------------------
    def _insert_batch(self, rows: list[dict[str, Any]]) -> int:
        with self.engine.begin() as conn:
            return len(conn.execute(self.insert, rows).all())

    def _insert_one_by_one(self, rows: Mapping[str, dict[str, Any]]) -> dict[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        unavailable: SQLAlchemyError | None = None
        for entry_id, row in rows.items():
            if unavailable is not None:
                verdicts[entry_id] = BACKOFF
                continue
            try:
                inserted = self._insert_batch([row])
            except (IntegrityError, DataError) as exc:
                reason = f"cdr refused by the database: {_reason(exc)}"
                log.warning("cdr.refused", entry_id=entry_id, call_id=row["call_id"], error=reason)
                verdicts[entry_id] = Verdict(Outcome.DEAD, reason)
            except SQLAlchemyError as exc:
                unavailable = exc
                log.warning("cdr.db_unavailable", error=_reason(exc))
                verdicts[entry_id] = BACKOFF
            else:
                verdicts[entry_id] = ACK
                self._note_written(1, inserted)
        return verdicts

    # -- bookkeeping --------------------------------------------------------------------------------
    def _note_written(self, rows: int, inserted: int) -> None:
        self.written += inserted
        self.duplicates += rows - inserted
        if rows - inserted:
            # a redelivery after a crash between commit and ack, or a claim by another replica
            log.info("cdr.duplicates_skipped", count=rows - inserted)

    def _count(self, verdicts: dict[str, Verdict]) -> dict[str, Verdict]:
        self.dead += sum(1 for v in verdicts.values() if v.outcome is Outcome.DEAD)
        return verdicts

    async def _unavailable(self, entries: Sequence[Entry], exc: Exception) -> dict[str, Verdict]:
        log.warning("cdr.db_unavailable", count=len(entries), error=_reason(exc))
        # the non-CDR entries are acknowledged anyway: they need no database
        return {e.id: (BACKOFF if e.type == CDR_EVENT else ACK) for e in entries}
