"""Interval reports: 15-minute roll-ups per flow and per agent, from `cdrs` into `interval_reports`.

`rollup` (beat, every `reports_interval_s`) recomputes the current and the previous interval (a
CDR is written when its call ends, so an interval fills until a while after it closes); each
interval is replaced whole in one transaction, so a rerun is harmless. By received time: offered =
CDRs, answered / abandoned by outcome, service level = answered with wait <= the threshold /
offered, averages of wait (all) and talk (answered); occupancy (agents) = talk time / 15 minutes.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from callcenter.db.jobs import IntervalReport
from callcenter.db.models import Cdr
from callcenter_jobs.app import app
from callcenter_jobs.runtime import runtime

INTERVAL = timedelta(minutes=15)


def interval_of(at: datetime) -> datetime:
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def rollup_interval(start: datetime, threshold_ms: int) -> int:
    """Replace the reports of the interval starting at `start`; the number of rows written."""
    end = start + INTERVAL
    with runtime().sessions() as session:
        # one final row per call (attempt 0): the rows of agent attempts that did not connect are not calls
        cdrs = list(session.scalars(select(Cdr).where(Cdr.received_at >= start, Cdr.received_at < end,
                                                      Cdr.attempt == 0)))
        groups: dict[tuple[str, str], list[Cdr]] = defaultdict(list)
        for cdr in cdrs:
            groups["flow", cdr.flow_id].append(cdr)
            if cdr.agent_id:
                groups["agent", cdr.agent_id].append(cdr)
        session.execute(delete(IntervalReport).where(IntervalReport.interval_start == start))
        for (kind, key), rows in groups.items():
            answered = [c for c in rows if c.outcome == "answered"]
            talk = sum(c.talk_ms for c in answered)
            session.add(IntervalReport(
                interval_start=start, kind=kind, key=key, offered=len(rows), answered=len(answered),
                abandoned=sum(1 for c in rows if c.outcome == "abandoned"),
                service_level=sum(1 for c in answered if c.wait_ms <= threshold_ms) / len(rows),
                avg_wait_ms=sum(c.wait_ms for c in rows) // len(rows),
                avg_talk_ms=talk // len(answered) if answered else 0,
                occupancy=min(talk / (INTERVAL.total_seconds() * 1000), 1.0) if kind == "agent" else 0.0))
        session.commit()
        return len(groups)


@app.task(name="callcenter_jobs.reports.rollup")
def rollup(now_s: float | None = None) -> int:
    """The current and the previous interval; the rows written."""
    now = datetime.fromtimestamp(now_s, UTC) if now_s is not None else datetime.now(UTC)
    threshold_ms = runtime().settings.report_sl_threshold_s * 1000
    current = interval_of(now)
    return rollup_interval(current - INTERVAL, threshold_ms) + rollup_interval(current, threshold_ms)
