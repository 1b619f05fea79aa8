"""/v1/cdrs: call detail records from SQL (written by the cdr-writer)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from callcenter.db.models import Cdr
from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import AGENT_ID_PATTERN, FLOW_ID_PATTERN, CdrOut, CdrPage

router = APIRouter(prefix="/v1/cdrs", tags=["cdrs"])


def _aware(value: datetime | None) -> datetime | None:
    # a timestamp without a zone is taken as UTC, the zone every CDR is stored in
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("")
async def list_cdrs(
    services: ServicesDep,
    flow_id: Annotated[str | None, Query(pattern=FLOW_ID_PATTERN)] = None,
    agent_id: Annotated[str | None, Query(pattern=AGENT_ID_PATTERN)] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601; no zone = UTC)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601; no zone = UTC)")] = None,
    outcome: Annotated[Literal["answered", "abandoned", "rejected", "failed", "dissuaded", "overflowed"] | None,
                       Query()] = None,
    media_type: Annotated[Literal["audio", "chat"] | None, Query()] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by arrival time")] = "desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> CdrPage:
    """CDRs, newest first by default; `next_offset` is null on the last page."""
    query = select(Cdr)
    if flow_id is not None:
        query = query.where(Cdr.flow_id == flow_id)
    if agent_id is not None:
        query = query.where(Cdr.agent_id == agent_id)
    if (start := _aware(since)) is not None:
        query = query.where(Cdr.received_at >= start)
    if (end := _aware(until)) is not None:
        query = query.where(Cdr.received_at < end)
    if outcome is not None:
        query = query.where(Cdr.outcome == outcome)
    if media_type is not None:
        query = query.where(Cdr.media_type == media_type)
    # id breaks ties, so that paging never skips or repeats a row
    if order == "desc":
        query = query.order_by(Cdr.received_at.desc(), Cdr.id.desc())
    else:
        query = query.order_by(Cdr.received_at, Cdr.id)
    # one extra row tells whether there is a next page without a COUNT(*) over the table
    query = query.limit(limit + 1).offset(offset)

    def fetch(session: Session) -> list[CdrOut]:
        return [CdrOut.model_validate(row) for row in session.scalars(query)]

    rows = await services.sql(fetch)
    more = len(rows) > limit
    return CdrPage(items=rows[:limit], limit=limit, offset=offset, next_offset=offset + limit if more else None)
