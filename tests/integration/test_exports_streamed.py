"""CDR exports streamed from SQL to chunks and from chunks to the download (issue 12, acceptance 6):
the format, row for row, on SQLite, PostgreSQL and MariaDB; a large export on PostgreSQL whose
memory stays far below its size (measured in a process of its own: its peak RSS before and after);
the api's download joins the chunks. Migration 0007: tests/integration/test_jobs_schema.py."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_client import running
from sqlalchemy import Engine, insert, select, text

from callcenter.db.engine import make_engine, upgrade
from callcenter.db.jobs import CdrExport, CdrExportChunk
from callcenter.db.models import Cdr
from callcenter.settings import ApiSettings
from callcenter_dev.servers import RedisServer
from callcenter_jobs.exports import COLUMNS, export_cdrs

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CALLERS = ['plain', 'with, comma', 'with "quotes"', 'two\nlines', 'ünïcödé ☎', '']


def cdr(i: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"call_id": f"c{i:08d}", "attempt": 0, "flow_id": "sales",
                           "caller": CALLERS[i % len(CALLERS)],
                           "agent_id": None if i % 3 else f"a{i % 7}", "received_at": T0 + timedelta(seconds=i),
                           "wait_ms": i, "pickup_ms": 2 * i, "talk_ms": 3 * i, "outcome": "answered",
                           "ended_by": "caller", "reason": "bye", "rejections": 0, "event_id": f"{i}-0",
                           "sip_call_id": f"{i}@edge", "hold_ms": None if i % 2 else i}
    row.update(over)
    return row


def new_export(engine: Engine, fmt: str, since: datetime, until: datetime) -> str:
    export_id = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(insert(CdrExport), {"id": export_id, "since": since, "until": until, "format": fmt,
                                         "status": "running", "rows": 0, "created_at": datetime.now(UTC)})
    return export_id


def chunks(engine: Engine, export_id: str) -> list[bytes]:
    with engine.connect() as conn:
        return list(conn.scalars(select(CdrExportChunk.data).where(CdrExportChunk.export_id == export_id)
                                 .order_by(CdrExportChunk.seq)))


def parsed(content: bytes, fmt: str) -> list[dict[str, Any]]:
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(content.decode(), newline=""))
        assert reader.fieldnames == COLUMNS
        return list(reader)
    return [json.loads(line) for line in content.decode().splitlines()]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_export_is_every_row_in_range_in_order_on_every_sql(sql_url: str, fmt: str) -> None:
    upgrade(sql_url)
    engine = make_engine(sql_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Cdr), [cdr(i) for i in range(60)]
                         + [cdr(i, attempt=1, outcome="not_connected", call_type=-2, agent_id="a9",
                                reason="rejected", ended_by="agent") for i in range(0, 60, 10)]
                         + [cdr(1000, received_at=T0 - timedelta(seconds=1))])  # before the range
            expected = [dict(r._mapping) for r in conn.execute(
                select(Cdr.__table__).where(Cdr.received_at >= T0).order_by(Cdr.id))]
        export_id = new_export(engine, fmt, T0, T0 + timedelta(days=1))
        assert export_cdrs(engine, export_id, chunk_bytes=512) == 66
        assert export_cdrs(engine, export_id, chunk_bytes=512) == 66  # a retried job writes the same file once
        pieces = chunks(engine, export_id)
        assert len(pieces) > 5 and all(len(p) < 512 + 600 for p in pieces)  # a chunk: its size plus one row
        got = parsed(b"".join(pieces), fmt)
        assert len(got) == 66 and sum(1 for r in got if str(r["attempt"]) == "1") == 6
        for row, want in zip(got, expected, strict=True):
            for name in COLUMNS:
                value = want[name].isoformat() if isinstance(want[name], datetime) else want[name]
                if fmt == "csv":
                    assert row[name] == ("" if value is None else str(value)), name
                else:
                    assert row[name] == value, name
        assert datetime.fromisoformat(got[0]["received_at"]) == T0
        with engine.connect() as conn:
            assert tuple(conn.execute(select(CdrExport.status, CdrExport.rows)
                                      .where(CdrExport.id == export_id)).one()) == ("done", 66)
        empty = new_export(engine, fmt, T0 - timedelta(days=9), T0 - timedelta(days=8))
        assert export_cdrs(engine, empty) == 0
        assert parsed(b"".join(chunks(engine, empty)), fmt) == []
    finally:
        engine.dispose()


MEASURE = """
import sys
from callcenter.db.engine import make_engine
from callcenter_jobs.exports import export_cdrs

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

engine = make_engine(sys.argv[1])
with engine.connect() as conn:
    conn.exec_driver_sql("SELECT 1")
before = hwm_kib()
rows = export_cdrs(engine, sys.argv[2])
print(rows, before, hwm_kib())
"""


def test_a_large_export_is_streamed_not_loaded_whole(pg_server: Any) -> None:
    """120,000 rows (about 30 MB of CSV) exported on PostgreSQL by a process of its own: its peak
    resident memory grows by a small part of that (a few thousand rows and one chunk at a time)."""
    url = pg_server.create_database("exports_large")
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for at in range(0, 120_000, 10_000):
                conn.execute(insert(Cdr), [cdr(i, caller="x" * 120) for i in range(at, at + 10_000)])
        export_id = new_export(engine, "csv", T0, T0 + timedelta(days=10))
        done = subprocess.run([sys.executable, "-c", MEASURE, url, export_id], capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        rows, before_kib, after_kib = (int(v) for v in done.stdout.split()[-3:])
        with engine.connect() as conn:
            size = int(conn.execute(text("SELECT sum(length(data)) FROM cdr_export_chunks")).scalar_one())
            count = int(conn.execute(text("SELECT count(*) FROM cdr_export_chunks")).scalar_one())
        assert rows == 120_000 and size > 25_000_000 and count > 100
        grown = (after_kib - before_kib) * 1024
        print(f"export {size / 1e6:.1f} MB in {count} chunks, peak RSS grew {grown / 1e6:.1f} MB")
        assert grown < size / 5, f"peak RSS grew {grown / 1e6:.1f} MB for a {size / 1e6:.1f} MB export"
    finally:
        engine.dispose()


@pytest.fixture
async def api_and_db(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    db_url = f"sqlite:///{tmp_path / 'cc.sqlite3'}"
    upgrade(db_url)
    engine = make_engine(db_url)
    async with running(ApiSettings(redis_url=redis_server.url, tenant="exports", database_url=db_url)) as (client, _):
        yield client, engine
    engine.dispose()


async def test_the_api_streams_the_chunks_as_one_file(api_and_db: tuple[httpx.AsyncClient, Engine]) -> None:
    api, engine = api_and_db
    with engine.begin() as conn:
        conn.execute(insert(Cdr), [cdr(i) for i in range(500)])
    r = await api.post("/v1/exports", json={"since": T0.isoformat(), "until": (T0 + timedelta(days=1)).isoformat(),
                                            "format": "jsonl"})
    export_id = r.json()["id"]
    assert (await api.get(f"/v1/exports/{export_id}/file")).status_code == 409  # not done yet
    export_cdrs(engine, export_id, chunk_bytes=4096)
    assert len(chunks(engine, export_id)) > 10
    async with api.stream("GET", f"/v1/exports/{export_id}/file") as f:
        assert f.status_code == 200 and f.headers["content-type"].startswith("application/jsonl")
        body = b"".join([part async for part in f.aiter_bytes()])
    assert body == b"".join(chunks(engine, export_id))
    assert [row["call_id"] for row in parsed(body, "jsonl")] == [f"c{i:08d}" for i in range(500)]
