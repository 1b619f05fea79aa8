"""A stream consumer's hot round trip, on a connection of its own: the XACK of what it handled and
the XREADGROUP of its next batch, written in one send and read back reply by reply.

`bus.StreamConsumer` reads this way on a single Redis or a Sentinel-managed master (a Redis Cluster
client routes each command itself and keeps the client's path). The commands, their order and the
reply Redis gives are those of a pipeline of the two; what it leaves out is the client's work
around every pipeline (a connection taken from the pool and given back through a task of its own,
the pipeline object, its retry wrapper), which at one or two reports per read cost about as much
CPU as the read itself (issue 15).

`send_with_read` goes one further (issue 15): a handler's commands (the dispatcher's FCALLs of a
batch) are written first in the same send, their replies read back at once, and the read's reply
taken later with `finish_read`, after the handler has settled the batch; so a batch costs one send
and one wake-up of Redis, not two (`bus.StreamConsumer.ride`).

The client's socket timeout (redis-py's default: 5 s) bounds the send, as it does for the client,
and the replies of one exchange together (one timer, not one per reply). `QuickSends`
(below) takes the timer task off small sends, on TCP or a Unix socket; a service opts in with
`quick_sends(client)`.

The connection is taken from the client's pool at the first read and kept; a failure to reach
Redis drops it (the next read connects again through the connection's own `connect()`, as the pool
would: a Sentinel-managed one asks the sentinels where the master is now) and is counted in
`callcenter_redis_errors_total`,
as the client counts its own; the error goes to the caller unchanged. An error reply (NOGROUP) is
raised once both replies are read, so the connection stays in step.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, UnixDomainSocketConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callcenter.metrics import REDIS_ERRORS, CountingRedis
from callcenter.redis import REDIS_DOWN


class KeptConnection:
    """A connection taken from `redis`'s pool at first use and kept: packed commands written in one
    send, their replies read back in order (see the module's doc for failures and error replies).
    Shared by the stream reader and the sip-edge's one-send report batches."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._conn: AbstractConnection | None = None
        self._count_errors = isinstance(redis, CountingRedis)  # as that client counts its own

    async def get(self) -> AbstractConnection:
        if self._conn is None:
            self._conn = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return self._conn

    async def exchange(self, packed: list[bytes] | None, n_replies: int) -> list[Any]:
        """Send `packed` (None: nothing, the replies of an earlier send are due), then read
        `n_replies` replies, an error reply as its exception (not raised: the others are read too)."""
        conn = await self.get()
        replies: list[Any] = []
        try:
            if packed is not None:
                if not conn.is_connected:
                    # as the pool does: through the connection's own connect(), which for a
                    # Sentinel-managed one asks the sentinels for the master (the send would
                    # reconnect to the address it had: after a failover, the old master)
                    await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_packed_command(packed)
            try:
                async with asyncio.timeout(conn.socket_timeout or None):   # None: no timer
                    await _read_replies(conn, n_replies, replies)
            except TimeoutError:
                raise RedisTimeoutError(f"Timeout reading {n_replies} replies from Redis") from None
        except BaseException as exc:  # a half-read connection is out of step: drop it
            await conn.disconnect(nowait=True)
            if self._count_errors and isinstance(exc, REDIS_DOWN):
                REDIS_ERRORS.inc()
            raise
        return replies

    @property
    def connection(self) -> AbstractConnection | None:
        """The kept connection, None before the first `get`."""
        return self._conn

    def write_now(self, packed: list[bytes]) -> bool:
        """Write `packed` at once, without awaiting (the caller's turn of the loop sends it), when the
        kept connection is up and takes it below its buffer's high-water mark; False, nothing
        written, otherwise (no connection yet, a plain `Connection`, a health check due, a full
        buffer): the caller sends through `exchange`. The replies are read with `exchange(None, n)`."""
        conn = self._conn
        return isinstance(conn, QuickSends) and conn.write_now(packed)

    async def close(self, *, drop: bool = False) -> None:
        """Give the connection back to the pool (disconnected first with `drop`: replies still due)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if drop:
                await conn.disconnect(nowait=True)
            await self.redis.connection_pool.release(conn)


async def _read_replies(conn: AbstractConnection, n: int, replies: list[Any]) -> None:
    """`n` replies into `replies`, an error reply as its exception (the others are still read).
    Each read without a timer of its own: the caller bounds them all with one (a timer per reply
    was a few per cent of the sip-edge's CPU, its report batches having one reply per command)."""
    for _ in range(n):
        try:
            replies.append(await conn.read_response(timeout=math.inf))
        except ResponseError as exc:
            replies.append(exc)


class StreamReader:
    """XACK + XREADGROUP of one consumer, one send per read (see the module's doc)."""

    def __init__(self, redis: Redis, stream: str, group: str, consumer: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._kept = KeptConnection(redis)
        self._reads: dict[tuple[str, int, int | None], list[bytes]] = {}  # packed XREADGROUPs
        self._in_flight = 0  # replies of a read sent by send_with_read, still to be read
        # the client's own parsing of the reply, so the entries look as `redis.xreadgroup` gives them
        # (read at construction, which does no I/O: a service built without a client for a test of
        # its pure parts has none)
        callbacks = getattr(redis, "response_callbacks", None) or {}
        self._parse = callbacks.get("XREADGROUP")

    @property
    def in_flight(self) -> bool:
        """A read was sent with `send_with_read` and its reply is still to be taken (`finish_read`)."""
        return self._in_flight > 0

    async def ack_and_read(self, ack_ids: Sequence[str], start: str, count: int, block: int | None) -> Any:
        """Acknowledge `ack_ids` (if any), then read up to `count` entries from `start` (">" or an
        id), blocking up to `block` ms when there is none; the reply as `redis.xreadgroup` gives it."""
        assert not self._in_flight, "a read is in flight: finish_read() first"
        packed = await self._pack([], ack_ids, start, count, block)
        replies = await self._kept.exchange(packed, 2 if ack_ids else 1)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return self._parse(replies[-1]) if self._parse is not None else replies[-1]

    async def send_with_read(self, commands: Sequence[tuple[Any, ...]], ack_ids: Sequence[str], start: str,
                             count: int, block: int | None) -> list[Any]:
        """Write `commands`, then the XACK of `ack_ids` (if any) and the XREADGROUP of the next
        batch, in one send; answer the replies of `commands` (an error reply as its exception, as a
        pipeline that does not raise gives it). The acknowledgement's and the read's replies are
        left on the connection for `finish_read()`: Redis runs the read after the commands, and a
        read that blocks blocks only itself."""
        assert not self._in_flight, "a read is in flight: finish_read() first"
        packed = await self._pack(commands, ack_ids, start, count, block)
        self._in_flight = 2 if ack_ids else 1
        try:
            return await self._kept.exchange(packed, len(commands))
        except BaseException:
            self._in_flight = 0  # the connection was dropped with them
            raise

    async def finish_read(self) -> Any:
        """The reply of the read `send_with_read` sent, as `ack_and_read` gives it (an error reply of
        the acknowledgement or the read is raised once both are read)."""
        n, self._in_flight = self._in_flight, 0
        assert n, "no read in flight"
        replies = await self._kept.exchange(None, n)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return self._parse(replies[-1]) if self._parse is not None else replies[-1]

    async def _pack(self, commands: Sequence[tuple[Any, ...]], ack_ids: Sequence[str], start: str, count: int,
                    block: int | None) -> list[bytes]:
        conn = await self._kept.get()
        read = self._reads.get((start, count, block))
        if read is None:  # the same few reads over and over: packed once each
            args: tuple[Any, ...] = ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count)
            if block is not None:
                args += ("BLOCK", block)
            read = conn.pack_command(*args, "STREAMS", self.stream, start)
            # kept for ">" and "0" only: a walk of the consumer's own entries reads from ever new ids
            if start in (">", "0") and len(self._reads) < 8:
                self._reads[(start, count, block)] = read
        packed = pack(conn, commands) if commands else []
        if ack_ids:
            packed += conn.pack_command("XACK", self.stream, self.group, *ack_ids)
        packed += read
        return packed

    async def close(self) -> None:
        """Give the connection back to the client's pool (dropped first if a read is in flight:
        its entries stay pending for this consumer name, read again at a restart or reclaimed)."""
        drop, self._in_flight = self._in_flight > 0, 0
        await self._kept.close(drop=drop)


def pack(conn: AbstractConnection, commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """`commands` packed for one send on `conn`: by `_pack_plain` when it can, else by the client."""
    own = _pack_plain(commands, conn.encoder.encoding)
    return [own] if own is not None else conn.pack_commands(commands)


def _pack_plain(commands: Sequence[tuple[Any, ...]], encoding: str) -> bytes | None:
    """RESP of commands whose arguments are all bytes, str or int (the FCALLs of a batch, the edge's
    report transactions), as the client's `pack_commands` writes them in one buffer, without its
    per-argument encoder; None for any other argument (the client packs those)."""
    out: list[bytes] = []
    for args in commands:
        out.append(b"*%d\r\n" % len(args))
        for arg in args:
            if isinstance(arg, bytes):
                b = arg
            elif isinstance(arg, str):
                b = arg.encode(encoding)
            elif type(arg) is int:
                b = b"%d" % arg
            else:
                return None
            out += (b"$%d\r\n" % len(b), b, b"\r\n")
    return b"".join(out)


class QuickSends(AbstractConnection):
    """Small sends without the client's timer task (see the module's doc), for a connection class
    of redis-py's: `QuickSendConnection` (TCP), `QuickSendUnixConnection` (a Unix socket).

    redis-py bounds a send by the socket timeout with `asyncio.wait_for`, which on Python 3.11 runs
    the write in a task of its own: a task, a timer and two more turns of the event loop for every
    command or pipeline sent. A write asyncio's transport takes below its high-water mark returns
    at once (the bytes go to the socket, or to the transport's buffer when the socket's is full),
    so there is nothing for the timeout to bound: such a send goes inline. A larger one, or one
    behind a buffer already filled, takes the client's path with its timeout. Replies are read
    with the timeout as before."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        timeout = self.socket_timeout
        writer = self._writer if self.is_connected else None
        if not timeout or writer is None:
            return await super().send_packed_command(command, check_health)
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        else:
            command = list(command)
        if not _fits(writer.transport, command):
            return await super().send_packed_command(command, check_health)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]  # with the timeout: it reads a PING reply
        self.socket_timeout = None
        try:
            await super().send_packed_command(command, check_health=False)
        finally:
            self.socket_timeout = timeout


    def write_now(self, packed: list[bytes]) -> bool:
        """`packed` written synchronously (see `KeptConnection.write_now`), or False."""
        writer = self._writer if self.is_connected else None
        if writer is None or (self.health_check_interval
                              and asyncio.get_running_loop().time() > self.next_health_check):
            return False
        if writer.transport.is_closing() or not _fits(writer.transport, packed):
            return False
        writer.writelines(packed)
        return True


class QuickSendConnection(QuickSends, Connection):
    """A TCP connection with quick sends."""


class QuickSendUnixConnection(QuickSends, UnixDomainSocketConnection):
    """A Unix-socket connection with quick sends (a redis-server on the same host: `unix://`)."""


# redis-py's connection classes, and the quick-send class each becomes
_QUICK: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: QuickSendConnection, UnixDomainSocketConnection: QuickSendUnixConnection}


def _fits(transport: Any, packed: Sequence[bytes]) -> bool:
    """`packed` stays below the transport's high-water mark: the write returns at once."""
    return bool(transport.get_write_buffer_size() + sum(len(c) for c in packed)
                <= transport.get_write_buffer_limits()[1])


def quick_sends(redis: Redis) -> None:
    """Make the client's plain TCP or Unix-socket connections quick-send ones (before its first
    command; a TLS or Sentinel-managed pool is left as it is, and so is a Redis Cluster client,
    which has a pool per node and no `connection_pool`)."""
    pool = getattr(redis, "connection_pool", None)
    if pool is not None and (quick := _QUICK.get(pool.connection_class)) is not None:
        pool.connection_class = quick
