"""CDR exports: `run_pending` (beat, every `jobs_pump_interval_s`) takes each export the api
recorded as pending, writes the CDRs received in its range as CSV or JSON lines into the row
(`cdr_exports.content`, downloaded through GET /v1/exports/{id}/file) and marks it done."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sqlalchemy import select, update

from callcenter.db.jobs import CdrExport
from callcenter.db.models import Cdr
from callcenter_jobs.app import app
from callcenter_jobs.runtime import runtime

COLUMNS = [c.name for c in Cdr.__table__.columns]


def _row(cdr: Cdr) -> dict[str, Any]:
    out = {name: getattr(cdr, name) for name in COLUMNS}
    out["received_at"] = cdr.received_at.isoformat()
    return out


def render(cdrs: list[Cdr], fmt: str) -> bytes:
    buf = io.StringIO()
    if fmt == "csv":
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(_row(c) for c in cdrs)
    else:
        buf.writelines(json.dumps(_row(c), separators=(",", ":")) + "\n" for c in cdrs)
    return buf.getvalue().encode()


@app.task(name="callcenter_jobs.exports.run_pending")
def run_pending() -> int:
    """Every pending export, each taken by one worker (pending -> running); the number done."""
    done = 0
    with runtime().sessions() as session:
        for export_id in list(session.scalars(select(CdrExport.id).where(CdrExport.status == "pending"))):
            taken = session.execute(update(CdrExport).where(CdrExport.id == export_id,
                                                            CdrExport.status == "pending").values(status="running"))
            session.commit()
            if not taken.rowcount:  # type: ignore[attr-defined]
                continue
            export = session.get(CdrExport, export_id)
            assert export is not None
            try:
                cdrs = list(session.scalars(select(Cdr).where(Cdr.received_at >= export.since,
                                                              Cdr.received_at < export.until).order_by(Cdr.id)))
                export.content, export.rows, export.status = render(cdrs, export.format), len(cdrs), "done"
            except Exception as exc:  # recorded on the export for the api to show, never lost in a log
                session.rollback()
                export = session.get(CdrExport, export_id)
                assert export is not None
                export.status, export.error = "failed", f"{type(exc).__name__}: {exc}"[:500]
            session.commit()
            done += 1
    return done
