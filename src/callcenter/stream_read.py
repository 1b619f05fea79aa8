"""A stream consumer's hot round trip, on a connection of its own: the XACK of what it handled and
the XREADGROUP of its next batch, written in one send and read back reply by reply.

`bus.StreamConsumer` reads this way on a single Redis or a Sentinel-managed master (a Redis Cluster
client routes each command itself and keeps the client's path). The commands, their order and the
reply Redis gives are those of a pipeline of the two; what it leaves out is the client's work
around every pipeline (a connection taken from the pool and given back through a task of its own,
the pipeline object, its retry wrapper), which at one or two reports per read cost about as much
CPU as the read itself (issue 15).

The connection is taken from the client's pool at the first read and kept; a failure to reach
Redis drops it (the next read connects again) and is counted in `callcenter_redis_errors_total`,
as the client counts its own; the error goes to the caller unchanged. An error reply (NOGROUP) is
raised once both replies are read, so the connection stays in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from callcenter.metrics import REDIS_ERRORS, CountingRedis
from callcenter.redis import REDIS_DOWN


class StreamReader:
    """XACK + XREADGROUP of one consumer, one send per read (see the module's doc)."""

    def __init__(self, redis: Redis, stream: str, group: str, consumer: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._conn: AbstractConnection | None = None
        self._count_errors = isinstance(redis, CountingRedis)  # as that client counts its own
        # the client's own parsing of the reply, so the entries look as `redis.xreadgroup` gives them
        self._parse = redis.response_callbacks.get("XREADGROUP")

    async def ack_and_read(self, ack_ids: Sequence[str], start: str, count: int, block: int | None) -> Any:
        """Acknowledge `ack_ids` (if any), then read up to `count` entries from `start` (">" or an
        id), blocking up to `block` ms when there is none; the reply as `redis.xreadgroup` gives it."""
        commands: list[tuple[Any, ...]] = []
        if ack_ids:
            commands.append(("XACK", self.stream, self.group, *ack_ids))
        read: tuple[Any, ...] = ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count)
        if block is not None:
            read += ("BLOCK", block)
        commands.append((*read, "STREAMS", self.stream, start))
        if self._conn is None:
            self._conn = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        conn = self._conn
        replies: list[Any] = []
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # the other reply is still to be read
                    replies.append(exc)
        except BaseException as exc:  # a half-read connection is out of step: drop it
            await conn.disconnect(nowait=True)
            if self._count_errors and isinstance(exc, REDIS_DOWN):
                REDIS_ERRORS.inc()
            raise
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return self._parse(replies[-1]) if self._parse is not None else replies[-1]

    async def close(self) -> None:
        """Give the connection back to the client's pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.redis.connection_pool.release(conn)
