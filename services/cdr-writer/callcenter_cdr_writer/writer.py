"""The cdr-writer's handler: CDR events in, CDR rows out, each exactly once.

Reads batches of decoded entries of the events stream `cc:{t}:events` (consumer group
`cdr-writer`, see `callcenter.bus.StreamConsumer`) and writes the `cdrs` table, the reference's
`cc_cdrs` rows: `call.ended` is a call's final row (attempt 0); `call.agent_failed` is the row of
an agent attempt that did not connect (attempt 1, 2, ... as numbered by the dispatcher; an event
from before attempts were numbered carries no `attempt` and is no row). Every other event type is
acknowledged at once. The batch's rows are inserted in one transaction with an idempotent insert
keyed by `(call_id, attempt)` (`ON CONFLICT DO NOTHING` on SQLite and PostgreSQL, `ON DUPLICATE KEY
UPDATE` with no change on MySQL/MariaDB), so an event delivered twice (a writer that died between
commit and ack, a claim by another replica) never writes a second row; the database says how many
rows were new (the statement's row count), so a batch is one statement and no read. The consumer
hands the writer only the entry types in `CDR_TYPES` (`StreamConsumer(types=...)`): the others are
acknowledged without being decoded. Verdicts:

- ACK   the row is committed (or was already there), or the entry is not a CDR event;
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
from sqlalchemy import Engine, Insert, event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from callcenter.bus import ACK, BACKOFF, Outcome, Verdict
from callcenter.contract.codec import Entry
from callcenter.db.models import (
    ATTEMPT_OUTCOME,
    CALL_TYPE_ANSWERED,
    CALL_TYPE_ATTEMPT,
    CALL_TYPE_DROPPED,
    CALL_TYPE_ERROR,
    FSTATS_ABANDONED,
    FSTATS_ANSWERED,
    FSTATS_DISTRIBUTED,
    FSTATS_INBOUND,
    Cdr,
)

log = structlog.get_logger(__name__)

CDR_EVENT = "call.ended"
ATTEMPT_EVENT = "call.agent_failed"
CDR_TYPES = frozenset({CDR_EVENT, ATTEMPT_EVENT})  # every other event type is no row
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# who ended an attempt that did not connect, by its reason (anything else: the system, e.g. the
# offer's lease expired or another phone of a ring-all answered)
ATTEMPT_ENDED_BY = {"rejected": "agent", "busy": "agent", "hung_up": "agent", "no_sdp": "agent",
                    "unreachable": "edge"}


class BadCdr(ValueError):
    """An event whose values can never become a row (dead-lettered, not retried)."""


def _count(data: Mapping[str, Any], name: str, limit: int = INT64_MAX) -> int:
    value = data[name]
    if not 0 <= value <= limit:
        raise BadCdr(f"{name}={value} is out of range")
    return int(value)


def _optional(data: Mapping[str, Any], name: str, low: int = 0, high: int = INT32_MAX) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not low <= value <= high:
        raise BadCdr(f"{name}={value} is out of range")
    return int(value)


def _media_type(data: Mapping[str, Any]) -> str:
    media_type = data.get("media_type") or "audio"  # events before chat support carry none
    if media_type not in ("audio", "chat"):
        raise BadCdr(f"media_type={media_type!r} is neither audio nor chat")
    return str(media_type)


def _common(entry: Entry, tenant: str) -> dict[str, Any]:
    """The columns every row of a call has, from either event (types checked by the codec)."""
    data = entry.data
    try:
        received_at = EPOCH + timedelta(milliseconds=_count(data, "received_ms"))
    except OverflowError as exc:
        raise BadCdr(f"received_ms={data['received_ms']} is not a date") from exc
    return {
        "tenant": tenant,
        "call_id": data["call_id"],
        "flow_id": data["flow"],
        "caller": data.get("caller") or "",
        "agent_id": data.get("agent_id") or None,
        "received_at": received_at,
        "wait_ms": _count(data, "wait_ms"),
        "rejections": _count(data, "rejections", INT32_MAX),
        "media_type": _media_type(data),
        "sip_call_id": data.get("sip_call_id") or None,
        "edge": data.get("edge") or None,
        "priority": _optional(data, "priority", -INT32_MAX, INT32_MAX),
        "queue_position": _optional(data, "queue_position"),
        "event_id": entry.id,
    }


def _call_type(outcome: str) -> int:
    if outcome == "answered":
        return CALL_TYPE_ANSWERED
    return CALL_TYPE_ERROR if outcome == "failed" else CALL_TYPE_DROPPED


def final_row(entry: Entry, tenant: str = "default") -> dict[str, Any]:
    """The final row (attempt 0) of a call, from its `call.ended` entry."""
    data = entry.data
    outcome = data["outcome"]
    distributed = (outcome == "answered" or bool(data.get("agent_id")) or bool(data.get("offers"))
                   or data["rejections"] > 0)
    fstats = (FSTATS_INBOUND | (FSTATS_DISTRIBUTED if distributed else 0)
              | (FSTATS_ANSWERED if outcome == "answered" else 0)
              | (FSTATS_ABANDONED if outcome == "abandoned" else 0))
    return {
        **_common(entry, tenant),
        "attempt": 0,
        "pickup_ms": _count(data, "pickup_ms"),
        "talk_ms": _count(data, "talk_ms"),
        "outcome": outcome,
        "ended_by": data["ended_by"],
        "reason": data["reason"],
        "call_type": _call_type(outcome),
        "fstats": fstats,
        "hold_ms": _optional(data, "hold_ms", 0, INT64_MAX),
        "dissuaded_rule": data.get("dissuaded_rule") or None,
        "overflow_to_flow": data.get("overflow_to_flow") or None,
        "overflow_to_uri": data.get("overflow_to_uri") or None,
    }


def attempt_row(entry: Entry, tenant: str = "default") -> dict[str, Any]:
    """The row of an agent attempt that did not connect, from its numbered `call.agent_failed` entry:
    that agent, pickup_ms = its ringing time, the call's rejections before it (the reference's -2)."""
    data = entry.data
    attempt = _optional(data, "attempt", 1)
    if "received_ms" not in data or "wait_ms" not in data or "rejections" not in data:
        raise BadCdr("a numbered call.agent_failed without received_ms, wait_ms or rejections")
    reason = data["reason"]
    return {
        **_common(entry, tenant),
        "attempt": attempt,
        "pickup_ms": _count(data, "ring_ms") if data.get("ring_ms") is not None else 0,
        "talk_ms": 0,
        "outcome": ATTEMPT_OUTCOME,
        "ended_by": ATTEMPT_ENDED_BY.get(reason, "system"),
        "reason": reason,
        "call_type": CALL_TYPE_ATTEMPT,
        "fstats": FSTATS_INBOUND | FSTATS_DISTRIBUTED,
    }


# every column the writer sets: each row carries all of them, because one executemany takes its
# columns from the first row (a key missing from a later row is an error, an extra one is dropped)
ROW_COLUMNS = tuple(c.key for c in Cdr.__table__.columns if c.key != "id")


def cdr_row(entry: Entry, tenant: str = "default") -> dict[str, Any] | None:
    """The `cdrs` row of one entry (every column, None where it has no value), or None when the
    entry is no CDR."""
    if entry.type == CDR_EVENT:
        row = final_row(entry, tenant)
    elif entry.type == ATTEMPT_EVENT and entry.data.get("attempt") is not None:
        row = attempt_row(entry, tenant)
    else:
        return None
    return {name: row.get(name) for name in ROW_COLUMNS}


def idempotent_insert(engine: Engine) -> Insert:
    """INSERT INTO cdrs ... that skips a row whose (call_id, attempt) is there already, for the
    engine's dialect, keeping the row count of an executemany (`preserve_rowcount`): the number of
    new rows. No RETURNING: on PostgreSQL it made the batch two to three times slower
    (bench/cdr_writer.py). On MySQL/MariaDB the count is only right on a connection without the
    FOUND_ROWS flag (`count_new_rows_only`)."""
    name = engine.dialect.name
    stmt: Insert
    if name in ("sqlite", "postgresql"):
        make: Any = sqlite.insert if name == "sqlite" else postgresql.insert
        stmt = make(Cdr).on_conflict_do_nothing(index_elements=[Cdr.call_id, Cdr.attempt])
    elif name == "mysql":  # also MariaDB
        # no change on a duplicate key: unlike INSERT IGNORE, a bad value still raises (strict mode)
        stmt = mysql.insert(Cdr).on_duplicate_key_update(attempt=Cdr.attempt)
    else:
        raise NotImplementedError(f"the cdr-writer supports SQLite, PostgreSQL and MySQL/MariaDB, not {name}")
    return stmt.execution_options(preserve_rowcount=True)


def _without_found_rows(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    from pymysql.constants import CLIENT

    cparams["client_flag"] = cparams.get("client_flag", 0) & ~CLIENT.FOUND_ROWS


def count_new_rows_only(engine: Engine) -> None:
    """MySQL/MariaDB: open the engine's connections without CLIENT_FOUND_ROWS, which SQLAlchemy sets
    and which counts a duplicate left unchanged by ON DUPLICATE KEY UPDATE as a row; without it the
    row count is the number of new rows. Connections already pooled are closed (opened again
    without the flag). The writer's engine only inserts, so nothing relies on the flag there."""
    if engine.dialect.name != "mysql" or event.contains(engine, "do_connect", _without_found_rows):
        return
    event.listen(engine, "do_connect", _without_found_rows)
    engine.dispose()


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"[:500]


class CdrWriter:
    """A `bus.Handler`: `await writer(entries)` returns {entry_id: Verdict}."""

    def __init__(self, engine: Engine, tenant: str = "default") -> None:
        self.engine = engine
        self.tenant = tenant
        self.insert = idempotent_insert(engine)
        count_new_rows_only(engine)
        self.transactions = 0  # insert transactions tried (committed or not)
        self.written = 0
        self.duplicates = 0
        self.dead = 0

    async def __call__(self, entries: Sequence[Entry]) -> dict[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        rows: dict[str, dict[str, Any]] = {}
        for entry in entries:
            try:
                row = cdr_row(entry, self.tenant)
            except BadCdr as exc:
                verdicts[entry.id] = Verdict(Outcome.DEAD, f"bad cdr: {exc}")
                continue
            if row is None:
                verdicts[entry.id] = ACK
            else:
                rows[entry.id] = row
        if not rows:
            return self._count(verdicts)
        try:
            inserted = await asyncio.to_thread(self._insert_batch, list(rows.values()))
        except (IntegrityError, DataError) as exc:
            log.warning("cdr.batch_refused", count=len(rows), error=_reason(exc))
            verdicts.update(await asyncio.to_thread(self._insert_one_by_one, rows))
        except SQLAlchemyError as exc:
            # the database is unavailable (or the schema is not there yet): keep everything pending
            return self._unavailable(verdicts, rows, exc)
        else:
            verdicts.update(dict.fromkeys(rows, ACK))
            self._note_written(len(rows), inserted)
        return self._count(verdicts)

    # -- SQL (worker thread) ------------------------------------------------------------------------
    def _insert_batch(self, rows: list[dict[str, Any]]) -> int:
        """Insert the rows in one transaction; returns how many were new."""
        self.transactions += 1
        with self.engine.begin() as conn:
            return int(conn.execute(self.insert, rows).rowcount)

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

    def _unavailable(self, verdicts: dict[str, Verdict], rows: Mapping[str, Any], exc: Exception) -> dict[str, Verdict]:
        log.warning("cdr.db_unavailable", count=len(rows), error=_reason(exc))
        # the entries that are no row (or a bad one) keep their verdict: they need no database
        return self._count({**verdicts, **dict.fromkeys(rows, BACKOFF)})
