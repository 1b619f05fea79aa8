"""/v1/cdrs: call detail records from SQL (written by the cdr-writer)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from callcenter.db.models import Cdr
from callcenter_api import paging
from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import AGENT_ID_PATTERN, CALL_ID_PATTERN, FLOW_ID_PATTERN, CdrOut, CdrPage

router = APIRouter(prefix="/v1/cdrs", tags=["cdrs"])


def _aware(value: datetime | None) -> datetime | None:
    # a timestamp without a zone is taken as UTC, the zone every CDR is stored in
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("", name="list")
async def list_cdrs(
    services: ServicesDep,
    flow_id: Annotated[str | None, Query(pattern=FLOW_ID_PATTERN)] = None,
    agent_id: Annotated[str | None, Query(pattern=AGENT_ID_PATTERN)] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601; no zone = UTC)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601; no zone = UTC)")] = None,
    outcome: Annotated[Literal["answered", "abandoned", "rejected", "failed", "dissuaded", "overflowed",
                               "not_connected"] | None, Query()] = None,
    media_type: Annotated[Literal["audio", "chat"] | None, Query()] = None,
    kind: Annotated[Literal["final", "attempt"] | None,
                    Query(description="final: one row per call; attempt: the agent attempts that did not "
                                      "connect; both by default")] = None,
    call_id: Annotated[str | None, Query(pattern=CALL_ID_PATTERN, description="every row of one call")] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by arrival time")] = "desc",
    limit: paging.Limit = paging.DEFAULT_LIMIT,
    cursor: paging.Cursor = None,
    offset: Annotated[int, Query(ge=0, le=2**31, description="rows to skip (older paging; prefer cursor)")] = 0,
) -> CdrPage:
    """CDRs, newest first by default. Page with `cursor` (the previous page's `next_cursor`, with the
    same filters and order): stable while CDRs are added. `offset` still works (not with a cursor)."""
    after = paging.decode(cursor, (str, str, int))
    if cursor is not None and after is not None and (after[0] != order or offset):
        raise paging.invalid(cursor, "this cursor is for another order, or was given with an offset")
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
    if kind is not None:
        query = query.where(Cdr.attempt == 0 if kind == "final" else Cdr.attempt > 0)
    if call_id is not None:
        query = query.where(Cdr.call_id == call_id)
    # id breaks ties, so that paging never skips or repeats a row
    if order == "desc":
        query = query.order_by(Cdr.received_at.desc(), Cdr.id.desc())
    else:
        query = query.order_by(Cdr.received_at, Cdr.id)
    if after is not None:
        at, row_id = datetime.fromisoformat(after[1]), after[2]
        if order == "desc":
            query = query.where(or_(Cdr.received_at < at, and_(Cdr.received_at == at, Cdr.id < row_id)))
        else:
            query = query.where(or_(Cdr.received_at > at, and_(Cdr.received_at == at, Cdr.id > row_id)))
    # one extra row tells whether there is a next page without a COUNT(*) over the table
    query = query.limit(limit + 1).offset(offset)

    def fetch(session: Session) -> list[CdrOut]:
        return [CdrOut.model_validate(row) for row in session.scalars(query)]

    rows = await services.sql(fetch)
    more = len(rows) > limit
    return CdrPage(items=rows[:limit], limit=limit, offset=offset, next_offset=offset + limit if more else None,
                   next_cursor=paging.next_cursor(rows, limit, lambda c: [order, c.received_at.isoformat(), c.id]))
