"""Cursor pagination of the api's lists: `?cursor=&limit=`, answered as `{"items": [...], "next_cursor"}`.

A cursor is opaque to clients: URL-safe base64 of the JSON sort key of the last item served (an id,
or a time and an id), so the next page starts right after it even when items are added or removed
in between (no row skipped or repeated, unlike an offset). `next_cursor` is null on the last page.
A cursor that does not decode is a 422. Reads and writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Select, select

T = TypeVar("T")
SortKey = list[Any]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
Cursor = Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_=-]+$",
                                     description="next_cursor of the previous page; absent for the first page")]


def encode(key: SortKey) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode()


def decode(cursor: str | None, shape: Sequence[type]) -> SortKey | None:
    """The sort key in `cursor` (None for none), checked against `shape` (the type of each part)."""
    if cursor is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        key = None
    if (not isinstance(key, list) or len(key) != len(shape)
            or not all(isinstance(part, kind) and not isinstance(part, bool) for part, kind in zip(key, shape,
                                                                                                   strict=True))):
        raise invalid(cursor, "not a cursor of this list: pass next_cursor as it came")
    return key


def invalid(cursor: str, why: str) -> RequestValidationError:
    """The 422 of a cursor that cannot be used."""
    return RequestValidationError([{"type": "value_error", "loc": ("query", "cursor"), "input": cursor, "msg": why}])


def next_cursor(items: Sequence[T], limit: int, key: Callable[[T], SortKey]) -> str | None:
    """The cursor after the page `items[:limit]` when `items` (fetched with one extra) has more."""
    return encode(key(items[limit - 1])) if len(items) > limit else None


def page_in_memory(items: Sequence[T], key: Callable[[T], SortKey], after: SortKey | None,
                   limit: int) -> tuple[list[T], str | None]:
    """One page of `items` (already in `key` order) after the sort key `after`, and the next cursor."""
    rest = [item for item in items if after is None or key(item) > after]
    return rest[:limit], next_cursor(rest[:limit + 1], limit, key)


def by_id(model: Any, cursor: str | None, limit: int) -> Select[Any]:
    """The SELECT of one page of `model` rows by id (flows, agents), with one extra row that tells
    whether there is a next page."""
    after = decode(cursor, (str,))
    query = select(model).order_by(model.id).limit(limit + 1)
    return query if after is None else query.where(model.id > after[0])
