"""`ETag` and `If-Match` of flows and agents: optimistic concurrency for their updates.

The ETag of a flow or an agent is a digest of its SQL row (every column, `updated_at` included):
it changes with every write of the definition, not with the agent's live state (a login does not
make a PUT stale). `If-Match` on a PUT is checked inside the write's own transaction (the row read
for update), so two clients that read the same version cannot both write: the second gets 412.
A PUT without If-Match is allowed (last write wins). Reads and writes nothing itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException, status

IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=1024,
                                       description="the ETag of the version this write replaces (412 if it is "
                                                   "no longer current); `*`: it must exist; absent: no check")]
ETAG_HEADER = {"ETag": {"description": "the version of the definition, for If-Match",
                        "schema": {"type": "string"}}}


def etag(row: Any) -> str:
    """The strong ETag of a SQL row of flows or agents."""
    columns = {column.name: getattr(row, column.name) for column in row.__table__.columns}
    digest = hashlib.sha256(json.dumps(columns, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


def _tags(header: str) -> list[str]:
    return [part.strip().removeprefix("W/") for part in header.split(",") if part.strip()]


def precondition(if_match: str | None, what: str) -> Callable[[Any], None] | None:
    """A check of the current row (None: none) against If-Match; raises 412 when it fails."""
    if if_match is None:
        return None
    wanted = _tags(if_match)

    def check(row: Any) -> None:
        if row is not None and ("*" in wanted or etag(row) in wanted):
            return
        current = "it does not exist" if row is None else f"its ETag is now {etag(row)}"
        raise HTTPException(status.HTTP_412_PRECONDITION_FAILED,
                            f"{what} changed since you read it ({current}): read it again, then write")

    return check
