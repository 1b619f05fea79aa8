"""The dispatcher's lost-edge check across Redis outages, on a real redis-server that is paused
(SIGSTOP) or restarted (AOF on).

While Redis is away no heartbeat lands; when it comes back, a live edge's last beat is as old as the
outage, and the dispatcher's first pass may come before the edge's next beat (0.19 s after Redis
returned, in issue 9). The check counts only the time the dispatcher could see Redis itself: after
an outage every edge gets a fresh lapse. An edge that really stopped is still declared lost, one
lapse after the dispatcher sees Redis again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from callcenter.redis import REDIS_DOWN
from callcenter.store import Store
from callcenter_dev.servers import RedisServer, stop_process
from callcenter_dispatcher.edges import EdgeWatch

LAPSE_MS = 1000


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    """A redis-server of its own (it gets paused or restarted), appending to its AOF."""
    server = RedisServer(appendonly=True).start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


async def passes(watch: EdgeWatch, seconds: float) -> dict[str, int]:
    """The dispatcher's loop for a while: a pass per interval, Redis errors waited out."""
    lost: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lost.update(await watch.check())
        except REDIS_DOWN:
            pass
        await asyncio.sleep(watch.interval_ms / 1000)
    return lost


async def outage(server: RedisServer, kind: str, seconds: float, watch: EdgeWatch) -> dict[str, int]:
    """Redis away for `seconds` while the dispatcher's passes go on; what they declared lost."""
    assert server.proc is not None
    if kind == "pause":
        os.kill(server.proc.pid, signal.SIGSTOP)
        task = asyncio.create_task(passes(watch, seconds))  # its pass in flight blocks until SIGCONT
        await asyncio.sleep(seconds)
        os.kill(server.proc.pid, signal.SIGCONT)
        return await task
    stop_process(server.proc)
    lost = await passes(watch, seconds)
    server.start()   # same port and directory: the AOF brings the heartbeats back
    return lost


@pytest.mark.parametrize("kind", ["pause", "restart"])
async def test_a_redis_outage_longer_than_the_lapse_declares_no_live_edge_lost(server: RedisServer,
                                                                              kind: str) -> None:
    client = aioredis.Redis.from_url(server.url)
    store = Store(client, "w")
    try:
        watch = EdgeWatch(store, LAPSE_MS)
        await store.edge_beat("alive", "alive-token", 60_000)
        await store.edge_beat("dead", "dead-token", 60_000)   # beats once, never again
        assert await passes(watch, 0.3) == {}

        lost = await outage(server, kind, 2.5 * LAPSE_MS / 1000, watch)
        # Redis is back; the dispatcher's pass comes before the live edge's next beat lands
        lost.update(await passes(watch, 0.1))
        assert lost == {}, lost

        # the live edge beats again; the dead one is declared lost a lapse after Redis came back
        back = time.monotonic()
        while "dead" not in lost and time.monotonic() - back < LAPSE_MS / 1000 + 3:
            await store.edge_beat("alive", "alive-token", 60_000)
            lost.update(await passes(watch, 0.2))
        assert "dead" in lost and "alive" not in lost, lost
        assert time.monotonic() - back >= LAPSE_MS / 1000 - 0.3
    finally:
        await client.aclose()
