"""/v1/events: the live event feed as Server-Sent Events (see `callcenter_api.feed`).

Each event is `id: <stream id>`, `event: <type>`, `data: <the event's data as JSON>`; a client
reconnecting with `Last-Event-ID` gets every entry after that id still retained, then the live
ones. An agent key sees its own agent's events and the events of calls offered to it; supervisor
and admin keys see everything of the tenant. `?types=` keeps only some types (`call.*` for a prefix).
A comment line is sent after `api_sse_heartbeat_s` idle seconds; a client that falls
`api_sse_buffer` events behind gets a last `event: dropped` (with the last id it received) and the
stream ends: it reconnects with that id.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from callcenter.contract.codec import Entry
from callcenter_api.auth import Principal
from callcenter_api.deps import PrincipalDep, Services, ServicesDep
from callcenter_api.feed import DROPPED

router = APIRouter(prefix="/v1", tags=["events"])

STREAM_ID = r"^[0-9]{1,20}-[0-9]{1,20}$"


class Visibility:
    """Which events a caller sees, decided in stream order (an agent follows the calls offered to it)."""

    def __init__(self, principal: Principal, types: list[str], current_call: str | None) -> None:
        self.agent_id = principal.agent_id if principal.role == "agent" else None
        self.exact = {t for t in types if not t.endswith("*")}
        self.prefixes = tuple(t[:-1] for t in types if t.endswith("*"))
        self.calls: set[str] = {current_call} if current_call else set()

    def sees(self, entry: Entry) -> bool:
        return self._mine(entry) and self._wanted(entry.type)

    def _wanted(self, etype: str) -> bool:
        if not self.exact and not self.prefixes:
            return True
        return etype in self.exact or etype.startswith(self.prefixes)

    def _mine(self, entry: Entry) -> bool:
        if self.agent_id is None:
            return True
        data = entry.data
        call_id = data.get("call_id")
        if data.get("agent_id") == self.agent_id:
            if isinstance(call_id, str):
                # the call is this agent's until it fails over to another agent or ends
                if entry.type in ("call.agent_failed", "call.ended"):
                    self.calls.discard(call_id)
                else:
                    self.calls.add(call_id)
            return True
        if entry.type.startswith("call.") and call_id in self.calls:
            if entry.type == "call.ended":
                self.calls.discard(call_id)
            return True
        return False


def sse(entry: Entry) -> str:
    return f"id: {entry.id}\nevent: {entry.type}\ndata: {json.dumps(entry.data, default=str)}\n\n"


async def event_stream(services: Services, visibility: Visibility, last_id: str | None) -> AsyncIterator[str]:
    settings = services.settings
    sub, head = await services.feed.subscribe(settings.api_sse_buffer)
    delivered = last_id or head
    try:
        yield ": connected\n\n"  # headers and a first byte at once, so clients know the feed is open
        if last_id is not None:
            async for entry in services.feed.backlog(last_id, head):
                delivered = entry.id
                if visibility.sees(entry):
                    yield sse(entry)
        while True:
            try:
                item = await asyncio.wait_for(sub.queue.get(), timeout=settings.api_sse_heartbeat_s)
            except TimeoutError:
                yield ": heartbeat\n\n"
                continue
            if item is DROPPED:
                reason = {"reason": "slow_consumer", "last_id": delivered,
                          "detail": f"more than {sub.buffer} events undelivered: reconnect with "
                                    f"Last-Event-ID {delivered}"}
                yield f"event: dropped\ndata: {json.dumps(reason)}\n\n"
                return
            delivered = item.id
            if visibility.sees(item):
                yield sse(item)
    finally:
        services.feed.unsubscribe(sub)


@router.get("/events", name="stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream"}})
async def events(
    services: ServicesDep,
    principal: PrincipalDep,
    types: Annotated[str | None, Query(max_length=1024, description="comma-separated event types; "
                                                                    "`call.*` for every call event")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> StreamingResponse:
    """Server-Sent Events: every event of the tenant the key may see, live; resume with Last-Event-ID."""
    if last_event_id is not None and not re.match(STREAM_ID, last_event_id):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                            "Last-Event-ID must be a stream id like 1700000000000-0")
    wanted = [t.strip() for t in (types or "").split(",") if t.strip()]
    current = None
    if principal.role == "agent" and principal.agent_id is not None:
        view = await services.reads.agent(principal.agent_id)
        current = view.call if view else None
    visibility = Visibility(principal, wanted, current)
    return StreamingResponse(event_stream(services, visibility, last_event_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
