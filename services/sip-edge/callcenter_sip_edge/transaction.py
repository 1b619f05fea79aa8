"""The report publisher's MULTI ... EXEC in one send, on a connection it keeps (issue 15).

A redis-py transaction pipeline takes a connection from the client's pool and gives it back for
every batch, builds a pipeline object, packs each command through its own call and wraps the whole
in the client's retry; the edge sends a batch every few reactor turns, and that work cost about as
much of the edge's loop as the batch itself. `OneSend` packs `MULTI`, the commands and `EXEC`
together, writes them in one send on a connection taken from the pool once, and reads the replies
back in order: the commands Redis runs and the replies it gives are those of the pipeline.

No retry here: a failure goes to the publisher, which decides whether the batch landed (its marker,
`callcenter.redis_durability`) before sending it again. A failure to reach Redis drops the
connection (the next batch connects again through the connection's own `connect()`, which for a
Sentinel-managed one asks the sentinels where the master is) and is counted in
`callcenter_redis_errors_total` as the client counts its own. An error reply (a command refused
when queued, EXECABORT, is raised once every reply is read, so the connection stays in step; an error
inside EXEC's reply (one command that failed when run) is left in its place, for the caller to
judge: the other commands of the transaction ran.

Used on a single Redis or a Sentinel-managed master; a Redis Cluster client, or a publisher that
WAITs for replicas, keeps the pipeline (publisher.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from callcenter.stream_read import KeptConnection, pack

_MULTI = ("MULTI",)
_EXEC = ("EXEC",)


class OneSend:
    """MULTI, `commands`, EXEC in one send on a kept connection (see the module's doc)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._kept = KeptConnection(redis)
        self._due = 0   # replies of a batch `start` wrote, still to be read by `finish`

    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """EXEC's reply (one entry per command, a command's error reply as its exception), or the
        error that refused the transaction raised."""
        conn = await self._kept.get()
        # +OK to MULTI, +QUEUED to each command (or its refusal), then EXEC's reply (or EXECABORT)
        replies = await self._kept.exchange(pack(conn, [_MULTI, *commands, _EXEC]), len(commands) + 2)
        return _exec_reply(replies)

    def can_start(self) -> bool:
        """Nothing is due from the kept connection and it is up (`start` may still find its buffer full)."""
        conn = self._kept.connection
        return not self._due and conn is not None and conn.is_connected

    def start(self, commands: Sequence[tuple[Any, ...]]) -> bool:
        """MULTI, `commands`, EXEC written at once, in the caller's turn of the loop (no await); their
        replies are read by `finish()`. False, nothing written, when the kept connection cannot take
        them now (not connected yet, a batch's replies still due, a full buffer): use `execute`."""
        conn = self._kept.connection
        if self._due or conn is None or not self._kept.write_now(pack(conn, [_MULTI, *commands, _EXEC])):
            return False
        self._due = len(commands) + 2
        return True

    async def finish(self) -> list[Any]:
        """The replies of what `start` wrote, as `execute` gives them (or raises)."""
        n, self._due = self._due, 0
        assert n, "nothing was started"
        return _exec_reply(await self._kept.exchange(None, n))

    async def close(self) -> None:
        """Give the connection back to the client's pool."""
        await self._kept.close()


def _exec_reply(replies: list[Any]) -> list[Any]:
    """EXEC's reply from the replies to MULTI, the queued commands and EXEC; an error that refused
    the transaction (a command refused when queued, EXECABORT) raised."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return list(replies[-1] or ())


def raise_errors(reply: Sequence[Any], *, but: Sequence[int] = ()) -> None:
    """Raise the first error reply of a command inside EXEC's reply, except at the positions `but`."""
    for i, item in enumerate(reply):
        if isinstance(item, ResponseError) and i not in but:
            raise item
