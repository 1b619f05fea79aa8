"""The live event feed behind `GET /v1/events`: one reader of `cc:{t}:events` per api process,
fanned out to every subscriber.

Why one reader: a thousand browser tabs would otherwise be a thousand blocking XREADs, each holding
a Redis connection and each decoding every entry; here Redis sees one XREAD (no consumer group: the
feed acknowledges nothing and every subscriber keeps its own cursor) and each entry is decoded once.
The reader starts with the first subscriber and stops after the last one leaves.

A subscriber gets every entry after the hub's cursor at the moment it subscribed (`head`); a client
resuming from a `Last-Event-ID` reads the entries between that id and `head` with XRANGE itself
(`backlog`), so nothing is lost or repeated across the seam. Each subscriber has a bounded queue:
when it is full the subscriber is dropped (its queue emptied and ended with `DROPPED`), never
buffered without bound. Reads Redis only; writes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import Redis

from callcenter.contract.codec import DecodeError, Entry, decode
from callcenter.redis import REDIS_DOWN

log = structlog.get_logger(__name__)

DROPPED = None  # the last item of a dropped subscriber's queue
BACKLOG_PAGE = 500


class Subscriber:
    """One client's bounded queue of entries (or DROPPED at its end)."""

    def __init__(self, buffer: int) -> None:
        self.queue: asyncio.Queue[Entry | None] = asyncio.Queue(maxsize=buffer + 1)  # +1: room for DROPPED
        self.buffer = buffer
        self.dropped = False

    def offer(self, entry: Entry) -> None:
        if self.dropped:
            return
        if self.queue.qsize() >= self.buffer:
            # too slow: forget what it has not taken and end its stream; the client resumes from the
            # last id it did get (Last-Event-ID), so nothing still retained is lost
            self.dropped = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(DROPPED)
            return
        self.queue.put_nowait(entry)


class EventHub:
    """The per-process reader of the events stream and its subscribers."""

    def __init__(self, redis: Redis, stream: str, *, block_ms: int = 1000, count: int = 500) -> None:
        self.redis, self.stream, self.block_ms, self.count = redis, stream, block_ms, count
        self.subscribers: set[Subscriber] = set()
        self.cursor = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def subscribe(self, buffer: int) -> tuple[Subscriber, str]:
        """A new subscriber and `head`: it receives every entry after `head`."""
        async with self._starting:
            if self._task is None or self._task.done():
                last: Any = await self.redis.xrevrange(self.stream, count=1)
                self.cursor = _text(last[0][0]) if last else "0-0"
                self._task = asyncio.create_task(self._run(), name="event-feed")
            # no await between reading the cursor and joining: the reader cannot move in between
            sub = Subscriber(buffer)
            self.subscribers.add(sub)
            return sub, self.cursor

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def backlog(self, after: str, head: str) -> AsyncIterator[Entry]:
        """The entries after `after` up to and including `head`, oldest first, page by page."""
        start = "(" + after
        while True:
            page: Any = await self.redis.xrange(self.stream, min=start, max=head, count=BACKLOG_PAGE)
            for eid, fields in page:
                entry = _decoded(fields, eid)
                if entry is not None:
                    yield entry
            if len(page) < BACKLOG_PAGE:
                return
            start = "(" + _text(page[-1][0])

    async def _run(self) -> None:
        delay = 0.1
        while self.subscribers:
            try:
                reply: Any = await self.redis.xread({self.stream: self.cursor}, count=self.count, block=self.block_ms)
                delay = 0.1
            except REDIS_DOWN as exc:
                log.warning("api.feed_redis_unavailable", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for _stream, entries in reply or []:
                for eid, fields in entries:
                    # cursor and fan-out without an await between: a new subscriber sees a consistent head
                    self.cursor = _text(eid)
                    entry = _decoded(fields, eid)
                    if entry is None:
                        continue
                    for sub in list(self.subscribers):
                        sub.offer(entry)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded(fields: Any, eid: str | bytes) -> Entry | None:
    try:
        return decode(fields, eid)
    except DecodeError as exc:  # an undecodable entry is skipped by the feed (the consumers dead-letter it)
        log.warning("api.feed_undecodable", entry_id=_text(eid), error=str(exc))
        return None
