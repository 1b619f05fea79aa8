"""/v1/dead-letters (admin): the entries the consumers could not handle (`cc:{t}:dead`, written by
`callcenter.bus`), listed, and replayed: the original entry is added again to the stream it came
from (a new id; the consumers take it like any other) and removed from the dead letters.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel

from callcenter_api import paging
from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import Page

router = APIRouter(prefix="/v1/dead-letters", tags=["dead-letters"])

STREAM_ID = r"^[0-9]{1,20}-[0-9]{1,20}$"
DeadId = Annotated[str, Path(pattern=STREAM_ID, description="the dead letter's stream id")]


class DeadLetterOut(BaseModel):
    """One entry of the dead-letter stream: where it came from and why it was set aside."""

    id: str
    stream: str
    group: str
    entry_id: str
    error: str
    type: str | None


class ReplayOut(BaseModel):
    """A dead letter put back on its stream."""

    id: str
    stream: str
    new_entry_id: str


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _out(eid: Any, fields: dict[Any, Any]) -> DeadLetterOut:
    f = {_text(k): v for k, v in fields.items()}
    etype = f.get("orig_type")
    return DeadLetterOut(id=_text(eid), stream=_text(f.get("stream", "")), group=_text(f.get("group", "")),
                         entry_id=_text(f.get("entry_id", "")), error=_text(f.get("error", "")),
                         type=_text(etype) if etype is not None else None)


@router.get("", name="list")
async def list_dead_letters(services: ServicesDep, cursor: paging.Cursor = None,
                            limit: paging.Limit = paging.DEFAULT_LIMIT) -> Page[DeadLetterOut]:
    """The newest dead letters first."""
    after = paging.decode(cursor, (str,))
    if cursor is not None and after is not None and not re.fullmatch(STREAM_ID, after[0]):
        raise paging.invalid(cursor, "not a cursor of this list: pass next_cursor as it came")
    newest = "(" + after[0] if after is not None else "+"
    entries: Any = await services.redis.xrevrange(services.store.keys.dead, max=newest, count=limit + 1)
    items = [_out(eid, fields) for eid, fields in entries]
    return Page(items=items[:limit], next_cursor=paging.next_cursor(items, limit, lambda d: [d.id]))


@router.post("/{dead_id}/replay", name="replay", responses={404: {"description": "unknown dead letter"}})
async def replay_dead_letter(dead_id: DeadId, services: ServicesDep) -> ReplayOut:
    """Put the original entry back on its stream and remove the dead letter."""
    keys = services.store.keys
    found: Any = await services.redis.xrange(keys.dead, min=dead_id, max=dead_id)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dead letter {dead_id!r} does not exist")
    fields = {_text(k): v for k, v in found[0][1].items()}
    stream = _text(fields.get("stream", ""))
    if not stream.startswith(keys.prefix):  # only this tenant's own streams
        raise HTTPException(status.HTTP_409_CONFLICT, f"dead letter {dead_id!r} names no stream of this tenant")
    original: dict[Any, Any] = {k.removeprefix("orig_"): v for k, v in fields.items() if k.startswith("orig_")}
    async with services.redis.pipeline(transaction=True) as pipe:
        pipe.xadd(stream, original)
        pipe.xdel(keys.dead, dead_id)
        new_id, _ = await pipe.execute()
    return ReplayOut(id=dead_id, stream=stream, new_entry_id=_text(new_id))
