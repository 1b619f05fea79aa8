"""callcenter.lifecycle.run_service against a real redis-server: the work and the loops run until
`stop`, the work is told to stop and may finish, /readyz turns 503 once stopping, a drain that
overruns its deadline is cut, a failed prepare step starts nothing, a failing work is the
service's failure, and the Redis client is closed in every case."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from callcenter import lifecycle
from callcenter.lifecycle import run_service
from callcenter_dev.servers import RedisServer, free_port


class Work:
    """A service's main work: runs until `request_stop`, then takes `drain_s` to finish."""

    def __init__(self, drain_s: float = 0.0) -> None:
        self.drain_s = drain_s
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.finished = False

    async def run(self) -> None:
        self.started.set()
        await self.stopping.wait()
        await asyncio.sleep(self.drain_s)
        self.finished = True

    def request_stop(self) -> None:
        self.stopping.set()


class Client(aioredis.Redis):
    """A Redis client that counts its closings."""

    closings = 0

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self.closings += 1
        await super().aclose(close_connection_pool)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Client]:
    client = Client.from_url(redis_server.url)
    await client.ping()  # a connection open, as a service has one
    yield client
    assert client.closings == 1, "run_service closes the Redis client once"


async def ready() -> bool:
    return True


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    writer.close()
    return status.split(b" ")[1]


async def test_runs_until_stop_then_drains_the_work_and_the_loops_and_closes(client: Client) -> None:
    stop = asyncio.Event()
    work = Work(drain_s=0.2)
    loop_ended = asyncio.Event()
    closed: list[str] = []

    async def loop(stop: asyncio.Event) -> None:
        await stop.wait()
        loop_ended.set()

    port = free_port()
    service = asyncio.create_task(run_service(
        "test", redis=client, health_port=port, ready=ready, work=work.run, on_stop=work.request_stop,
        loops=[loop], stop=stop, close=lambda: closed.append("engine")))
    await asyncio.wait_for(work.started.wait(), 2)
    assert await get(port, "/readyz") == b"200"
    stop.set()
    await asyncio.wait_for(work.stopping.wait(), 2)
    # draining: alive, but no longer ready
    assert (await get(port, "/healthz"), await get(port, "/readyz")) == (b"200", b"503")
    await asyncio.wait_for(service, 2)
    assert work.finished and loop_ended.is_set() and closed == ["engine"]
    with pytest.raises(ConnectionError):
        await get(port, "/healthz")


async def test_a_drain_past_its_deadline_is_cut_and_logged(client: Client) -> None:
    stop = asyncio.Event()
    work = Work(drain_s=60)
    service = asyncio.create_task(run_service("slow", redis=client, health_port=0, ready=ready, work=work.run,
                                              on_stop=work.request_stop, stop=stop, drain_s=0.2))
    await asyncio.wait_for(work.started.wait(), 2)
    with capture_logs() as logs:
        stop.set()
        await asyncio.wait_for(service, 2)
    assert not work.finished
    [line] = [entry for entry in logs if entry["event"] == "service.drain_deadline"]
    assert (line["service"], line["unfinished"]) == ("slow", 1)


async def test_a_prepare_step_stopped_first_starts_no_work(client: Client) -> None:
    work = Work()

    async def prepare(stop: asyncio.Event) -> bool:
        stop.set()  # stopped while waiting for a dependency
        return False

    await asyncio.wait_for(run_service("unprepared", redis=client, health_port=0, ready=ready, work=work.run,
                                       on_stop=work.request_stop, prepare=prepare), 2)
    assert not work.started.is_set()


async def test_a_failing_work_fails_the_service_and_stops_its_loops(client: Client) -> None:
    loop_ended = asyncio.Event()

    async def broken() -> None:
        raise RuntimeError("boom")

    async def loop(stop: asyncio.Event) -> None:
        await stop.wait()
        loop_ended.set()

    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(run_service("broken", redis=client, health_port=0, ready=ready, work=broken,
                                           on_stop=lambda: None, loops=[loop]), 2)
    assert loop_ended.is_set()


async def test_health_binds_loopback_unless_told(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Health endpoints are not exposed beyond the host by default (issue 10 item 10)."""
    bound: list[str] = []
    real = lifecycle.serve_health

    async def recording(host: str, port: int, ready: Any) -> asyncio.Server:
        bound.append(host)
        return await real(host, port, ready)

    monkeypatch.setattr(lifecycle, "serve_health", recording)
    stop = asyncio.Event()
    work = Work(drain_s=0)
    service = asyncio.create_task(run_service("bind", redis=client, health_port=free_port(), ready=ready,
                                              work=work.run, on_stop=work.request_stop, stop=stop))
    await asyncio.wait_for(work.started.wait(), 2)
    stop.set()
    await asyncio.wait_for(service, 2)
    assert bound == ["127.0.0.1"]  # services pass CC_HEALTH_HOST to widen it


# A service process: SIGTERMs itself once running (the stop), drains, closes, then gets a second
# SIGTERM while it exits (a supervisor's or a rolling update's second signal) and says it lived on.
SECOND_SIGTERM = """
import asyncio, os, signal, sys, time
import redis.asyncio as aioredis
from callcenter.lifecycle import run_service, start_from_command_line
from callcenter.settings import CommonSettings

async def run(settings):
    stopping = asyncio.Event()

    async def work():
        os.kill(os.getpid(), signal.SIGTERM)
        await stopping.wait()

    async def ready():
        return True

    await run_service("second-sigterm", redis=aioredis.Redis(), health_port=0, ready=ready, work=work,
                      on_stop=stopping.set)

start_from_command_line("second-sigterm", "", CommonSettings, run, argv=[])
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.2)
print("exited cleanly", flush=True)
"""


def test_a_second_sigterm_while_the_process_exits_does_not_kill_it() -> None:
    """The fault suite's rolling update sends SIGTERM, then SIGTERM again to wait for the exit: a
    cdr-writer that had drained by then died of the second one (-15) with the event loop closed."""
    proc = subprocess.run([sys.executable, "-c", SECOND_SIGTERM], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "CC_LOG_FORMAT": "json"})
    assert (proc.returncode, proc.stdout.strip()) == (0, "exited cleanly"), proc.stderr
