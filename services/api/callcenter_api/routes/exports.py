"""/v1/exports (admin): CDR exports for a date range as CSV or JSON lines, made by a celery job
(`callcenter_jobs.exports`): POST records the request (pending), GET shows its state, GET .../file
downloads it once done, streamed from `cdr_export_chunks` chunk by chunk. Reads and writes
`cdr_exports`, reads `cdr_export_chunks`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from callcenter.db.jobs import CdrExport, CdrExportChunk
from callcenter_api.deps import ServicesDep

router = APIRouter(prefix="/v1/exports", tags=["exports"])

ExportId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
MEDIA = {"csv": "text/csv", "jsonl": "application/jsonl"}


class ExportIn(BaseModel):
    """CDRs received in [since, until) (no zone = UTC), as csv or jsonl."""

    since: datetime
    until: datetime
    format: Literal["csv", "jsonl"] = "csv"


class ExportOut(BaseModel):
    """An export and its state: pending, running, done (download from .../file) or failed."""

    id: str
    since: datetime
    until: datetime
    format: str
    status: str
    rows: int
    error: str | None
    created_at: datetime


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@router.post("", name="create", status_code=status.HTTP_202_ACCEPTED)
async def create_export(body: ExportIn, services: ServicesDep) -> ExportOut:
    if _utc(body.until) <= _utc(body.since):
        raise HTTPException(422, "until must be after since")
    export = CdrExport(id=uuid.uuid4().hex, since=_utc(body.since), until=_utc(body.until), format=body.format,
                       status="pending", rows=0, created_at=datetime.now(UTC))

    def add(session: Session) -> ExportOut:
        session.add(export)
        session.commit()
        return ExportOut.model_validate(export, from_attributes=True)
    return await services.sql(add)


def _get(session: Session, export_id: str) -> CdrExport:
    export = session.get(CdrExport, export_id)
    if export is None:
        raise HTTPException(404, f"export {export_id!r} does not exist")
    return export


@router.get("/{export_id}", name="get", responses={404: {"description": "unknown export"}})
async def get_export(export_id: ExportId, services: ServicesDep) -> ExportOut:
    return await services.sql(lambda s: ExportOut.model_validate(_get(s, export_id), from_attributes=True))


@router.get("/{export_id}/file", name="file", response_class=StreamingResponse,
            responses={404: {"description": "unknown export"}, 409: {"description": "not done yet"}})
async def download_export(export_id: ExportId, services: ServicesDep) -> StreamingResponse:
    """The export's file, streamed chunk by chunk as the job stored it (one chunk in memory at a time)."""
    export = await services.sql(lambda s: _get(s, export_id))
    if export.status != "done":
        raise HTTPException(409, f"export {export_id!r} is {export.status}, not done")

    def chunk(seq: int) -> Callable[[Session], bytes | None]:
        def fetch(session: Session) -> bytes | None:
            return session.scalar(select(CdrExportChunk.data).where(CdrExportChunk.export_id == export_id,
                                                                    CdrExportChunk.seq == seq))
        return fetch

    async def chunks() -> AsyncIterator[bytes]:
        seq = 0
        while (data := await services.sql(chunk(seq))) is not None:
            yield data
            seq += 1

    return StreamingResponse(chunks(), media_type=MEDIA[export.format], headers={
        "Content-Disposition": f'attachment; filename="cdrs-{export.id}.{export.format}"'})
