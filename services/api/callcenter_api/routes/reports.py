"""/v1/reports/intervals: the 15-minute roll-ups per flow and per agent that the celery beat job
writes (`callcenter_jobs.reports`, table `interval_reports`). Reads only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from callcenter.db.jobs import IntervalReport
from callcenter_api.deps import ServicesDep

router = APIRouter(prefix="/v1/reports", tags=["reports"])


class IntervalOut(BaseModel):
    """One interval of one flow or agent."""

    interval_start: datetime
    kind: str
    key: str
    offered: int
    answered: int
    abandoned: int
    service_level: float
    avg_wait_ms: int
    avg_talk_ms: int
    occupancy: float


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get("/intervals", name="intervals")
async def list_intervals(services: ServicesDep, kind: Annotated[Literal["flow", "agent"] | None, Query()] = None,
                         key: Annotated[str | None, Query(max_length=128)] = None,
                         since: Annotated[datetime | None, Query(description="interval start at or after")] = None,
                         until: Annotated[datetime | None, Query(description="interval start before")] = None,
                         limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[IntervalOut]:
    """Intervals, oldest first."""
    query = select(IntervalReport).order_by(IntervalReport.interval_start, IntervalReport.kind, IntervalReport.key)
    if kind is not None:
        query = query.where(IntervalReport.kind == kind)
    if key is not None:
        query = query.where(IntervalReport.key == key)
    if (start := _utc(since)) is not None:
        query = query.where(IntervalReport.interval_start >= start)
    if (end := _utc(until)) is not None:
        query = query.where(IntervalReport.interval_start < end)

    def fetch(session: Session) -> list[IntervalOut]:
        return [IntervalOut.model_validate(r, from_attributes=True) for r in session.scalars(query.limit(limit))]
    return await services.sql(fetch)
