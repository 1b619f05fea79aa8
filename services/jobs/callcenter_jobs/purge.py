"""SQL retention (beat, every `purge_interval_s`): deletes CDRs, interval reports, exports and
finished webhook deliveries older than their configured age (an export with its chunks) (`cdr_keep_days`, ...)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from callcenter.db.jobs import CdrExport, CdrExportChunk, IntervalReport, WebhookDelivery
from callcenter.db.models import Cdr
from callcenter_jobs.app import app
from callcenter_jobs.runtime import runtime


@app.task(name="callcenter_jobs.purge.purge")
def purge(now_s: float | None = None) -> dict[str, int]:
    """Rows deleted per table."""
    rt = runtime()
    now = datetime.fromtimestamp(now_s, UTC) if now_s is not None else datetime.now(UTC)
    s = rt.settings
    statements = {
        "cdrs": delete(Cdr).where(Cdr.received_at < now - timedelta(days=s.cdr_keep_days)),
        "interval_reports": delete(IntervalReport).where(
            IntervalReport.interval_start < now - timedelta(days=s.reports_keep_days)),
        # an export's chunks first, then the export
        "cdr_export_chunks": delete(CdrExportChunk).where(CdrExportChunk.export_id.in_(
            select(CdrExport.id).where(CdrExport.created_at < now - timedelta(days=s.exports_keep_days)))),
        "cdr_exports": delete(CdrExport).where(CdrExport.created_at < now - timedelta(days=s.exports_keep_days)),
        "webhook_deliveries": delete(WebhookDelivery).where(
            WebhookDelivery.status == "delivered",
            WebhookDelivery.updated_at < now - timedelta(days=s.exports_keep_days)),
    }
    out = {}
    with rt.sessions() as session:
        for table, statement in statements.items():
            out[table] = int(session.execute(statement).rowcount)  # type: ignore[attr-defined]
        session.commit()
    return out
