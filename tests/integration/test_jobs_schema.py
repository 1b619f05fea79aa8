"""Migrations of the jobs' tables with data, on SQLite, PostgreSQL and MariaDB (issue 12,
acceptance 1: up and down with data): 0006 (webhooks, interval reports, exports) and 0007 (an
export's file in chunks)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import column, insert, inspect, select, table, text
from sqlalchemy.exc import IntegrityError
from test_db_schema import CDR_INSERT, differences, downgrade
from test_exports_streamed import T0, cdr, chunks, new_export

from callcenter.db.engine import make_engine, upgrade
from callcenter.db.models import Cdr
from callcenter_jobs.exports import export_cdrs

JOBS_TABLES = {"webhook_subscriptions", "webhook_deliveries", "interval_reports", "cdr_exports"}
DELIVERY = table("webhook_deliveries", column("id"), column("subscription_id"), column("event_id"),
                 column("event_type"), column("payload"), column("status"), column("attempts"),
                 column("created_at"), column("updated_at"))


def test_migration_0006_adds_the_jobs_tables_and_takes_them_away(sql_url: str) -> None:
    """0005 with a CDR, then 0006: the jobs' tables take their rows, a second delivery of one event to
    one subscription is refused; down to 0005 drops them and keeps the CDR; up again works."""
    upgrade(sql_url, "0005")
    engine = make_engine(sql_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(CDR_INSERT), {"call_id": "c1", "wait": 0, "outcome": "answered"})
        upgrade(sql_url, "0006")
        delivery = {"id": "d1", "subscription_id": "s1", "event_id": "1-0", "event_type": "call.ended",
                    "payload": "{}", "status": "pending", "attempts": 0, "created_at": T0, "updated_at": T0}
        with engine.begin() as conn:
            conn.execute(insert(DELIVERY), delivery)
            conn.execute(text("INSERT INTO webhook_subscriptions (id, url, event_types, secret, created_at) "
                              "VALUES ('s1', 'http://x.example/', '*', 'secret', :t)"), {"t": T0})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(DELIVERY), {**delivery, "id": "d2"})
        assert JOBS_TABLES <= set(inspect(engine).get_table_names())
        downgrade(engine, "0005")
        assert not JOBS_TABLES & set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert list(conn.execute(text("SELECT call_id FROM cdrs")).scalars()) == ["c1"]
        upgrade(sql_url)
        assert differences(sql_url) == []
    finally:
        engine.dispose()


OLD_EXPORTS = table("cdr_exports", column("id"), column("since"), column("until"), column("format"),
                    column("status"), column("rows"), column("content"), column("created_at"))


def test_migration_0007_keeps_the_files_both_ways(sql_url: str) -> None:
    """0006 with an export's file in `content` (60 KB: 0006's BLOB on MariaDB holds 64 KiB), then
    0007: the same bytes in chunks; a new export of many chunks; down to 0006: both files whole in
    `content`; up again works."""
    upgrade(sql_url, "0006")
    engine = make_engine(sql_url)
    old = b"id,call_id\n" + b"".join(b"%05d,c%05d\n" % (i, i) for i in range(5000))
    try:
        with engine.begin() as conn:
            conn.execute(insert(OLD_EXPORTS), {"id": "e1", "since": T0, "until": T0, "format": "csv", "status": "done",
                                               "rows": 5000, "content": old, "created_at": T0})
        upgrade(sql_url)
        assert b"".join(chunks(engine, "e1")) == old
        assert differences(sql_url) == []
        with engine.begin() as conn:
            conn.execute(insert(Cdr), [cdr(i) for i in range(100)])
        new = new_export(engine, "jsonl", T0, T0 + timedelta(days=1))
        export_cdrs(engine, new, chunk_bytes=1024)
        new_file = b"".join(chunks(engine, new))
        assert len(chunks(engine, new)) > 10
        downgrade(engine, "0006")
        with engine.connect() as conn:
            files = dict(conn.execute(select(OLD_EXPORTS.c.id, OLD_EXPORTS.c.content)).all())
        assert files == {"e1": old, new: new_file}
        upgrade(sql_url)
        assert b"".join(chunks(engine, new)) == new_file
    finally:
        engine.dispose()
