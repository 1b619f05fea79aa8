"""A TCP proxy in front of a redis-server that loses the reply of a transaction Redis applied.

What a Redis restart or failover can do to a client at the worst moment: EXEC reached Redis and
ran (its writes are in the dataset and the AOF), and the connection dropped before its reply came
back. `ExecReplyCutter` makes that happen on demand: while armed, a client connection whose data
contained an EXEC is cut once Redis' reply to the EXEC starts coming back (the first array or error
after the `+OK`/`+QUEUED` lines of MULTI and its commands: Redis has run the transaction by then),
and that reply is never relayed. `arm(before=True)` cuts instead before the EXEC reaches Redis (the
transaction never runs). Every other connection and every other reply passes untouched.

It runs on the test's asyncio loop, on a free loopback port (`callcenter_dev.servers.free_port`).
"""

from __future__ import annotations

import asyncio
import contextlib

from callcenter_dev.servers import free_port

_EXEC = b"\r\nEXEC\r\n"


def _exec_reply_started(replies: bytes) -> bool:
    """Whether `replies` (what Redis sent after a MULTI ... EXEC) holds the start of EXEC's reply:
    a line that is not a simple string (MULTI's `+OK`, each command's `+QUEUED`)."""
    return any(line[:1] in (b"*", b"-", b"_") for line in replies.split(b"\r\n") if line)


class ExecReplyCutter:
    """The proxy: `start()`, then `arm(n)` to lose the next `n` EXEC replies; `cut` counts them."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.armed = 0
        self.before = False
        self.cut = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> ExecReplyCutter:
        self.port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    def arm(self, times: int = 1, before: bool = False) -> None:
        self.armed += times
        self.before = before

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        exec_sent = asyncio.Event()
        done = asyncio.Event()

        async def to_redis() -> None:
            while data := await client_r.read(65536):
                if self.armed and _EXEC in data:
                    self.armed -= 1
                    if self.before:
                        self.cut += 1
                        break    # MULTI and its commands are dropped with the connection: nothing runs
                    exec_sent.set()
                upstream_w.write(data)
                await upstream_w.drain()
                if exec_sent.is_set():
                    return   # nothing more from this client goes through: its connection is cut
            done.set()

        async def to_client() -> None:
            held = b""
            while data := await upstream_r.read(65536):
                if exec_sent.is_set():
                    held += data
                    if _exec_reply_started(held):
                        self.cut += 1
                        break    # Redis has run the transaction; its reply is lost
                    continue
                client_w.write(data)
                await client_w.drain()
            done.set()

        tasks = [asyncio.create_task(to_redis()), asyncio.create_task(to_client())]
        self._tasks.update(tasks)
        try:
            await done.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
            for writer in (client_w, upstream_w):
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()
