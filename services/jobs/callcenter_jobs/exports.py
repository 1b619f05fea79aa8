"""CDR exports: `run_pending` (beat, every `jobs_pump_interval_s`) takes each export the api
recorded as pending and has `export_cdrs` write the CDRs received in its range, as CSV or JSON
lines, into `cdr_export_chunks` (downloaded through GET /v1/exports/{id}/file), then marks it done.

The CDRs are streamed, never loaded whole: they are read `READ_ROWS` at a time (`yield_per`: a
server-side cursor on PostgreSQL and MySQL/MariaDB) on one connection, rendered into a buffer that
is written out as a chunk of about `EXPORT_CHUNK_BYTES` whenever it fills, on another connection
(MySQL cannot run a statement on a connection whose unbuffered result is still being read). The
chunks and the state `done` are committed together: a failed export leaves no chunk behind.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from callcenter.db.jobs import EXPORT_CHUNK_BYTES, CdrExport, CdrExportChunk
from callcenter.db.models import Cdr
from callcenter_jobs.app import app
from callcenter_jobs.runtime import runtime

CDRS = Cdr.__table__
COLUMNS = [c.name for c in CDRS.columns]
READ_ROWS = 1000


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def export_cdrs(engine: Engine, export_id: str, chunk_bytes: int = EXPORT_CHUNK_BYTES) -> int:
    """Write the file of export `export_id` (its range and format from `cdr_exports`) as chunks and
    mark it done, in one transaction; returns the number of rows."""
    with engine.connect() as out:
        export = out.execute(select(CdrExport.since, CdrExport.until, CdrExport.format)
                             .where(CdrExport.id == export_id)).one()
        out.execute(delete(CdrExportChunk).where(CdrExportChunk.export_id == export_id))
        buf = io.StringIO()
        seq = rows = 0

        def flush() -> None:
            nonlocal seq
            out.execute(insert(CdrExportChunk), {"export_id": export_id, "seq": seq, "data": buf.getvalue().encode()})
            seq += 1
            buf.seek(0)
            buf.truncate()

        csv_out = csv.writer(buf) if export.format == "csv" else None
        if csv_out is not None:
            csv_out.writerow(COLUMNS)
        query = (select(CDRS).where(CDRS.c.received_at >= export.since, CDRS.c.received_at < export.until)
                 .order_by(CDRS.c.id))
        with engine.connect() as source:
            for row in source.execution_options(yield_per=READ_ROWS).execute(query):
                values = [_plain(v) for v in row]
                if csv_out is not None:
                    csv_out.writerow(values)
                else:
                    buf.write(json.dumps(dict(zip(COLUMNS, values, strict=True)), separators=(",", ":")) + "\n")
                rows += 1
                if buf.tell() >= chunk_bytes:
                    flush()
        if buf.tell() or seq == 0:
            flush()  # an empty export is one chunk: empty, or the CSV header
        out.execute(update(CdrExport).where(CdrExport.id == export_id).values(status="done", rows=rows))
        out.commit()
    return rows


@app.task(name="callcenter_jobs.exports.run_pending")
def run_pending() -> int:
    """Every pending export, each taken by one worker (pending -> running); the number done."""
    done = 0
    rt = runtime()
    with rt.sessions() as session:
        for export_id in list(session.scalars(select(CdrExport.id).where(CdrExport.status == "pending"))):
            taken = session.execute(update(CdrExport).where(CdrExport.id == export_id,
                                                            CdrExport.status == "pending").values(status="running"))
            session.commit()
            if not taken.rowcount:  # type: ignore[attr-defined]
                continue
            try:
                export_cdrs(rt.engine, export_id)
            except Exception as exc:  # recorded on the export for the api to show, never lost in a log
                session.execute(update(CdrExport).where(CdrExport.id == export_id).values(
                    status="failed", error=f"{type(exc).__name__}: {exc}"[:500]))
                session.commit()
            done += 1
    return done
