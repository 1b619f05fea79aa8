"""SSE fan-out benchmark: N concurrent subscribers of GET /v1/events on one api process.

One api process (auth on, a supervisor key) against a private redis-server. `--subscribers` raw-socket
SSE clients (asyncio Protocols, one connection each) subscribe; then `--rate` events per second for
`--seconds` are appended to `cc:{bench}:events` with XADD of the contract's `encode` (type
`agent.paused`, whose `reason` carries `bench-<seq>-<send time ns>`). Each client stamps the arrival
time the moment bytes reach `data_received`, before it parses anything.

Printed: event -> delivered latency p50/p99/max over every (event, subscriber) pair; completeness
(subscribers that got every event, in order, once; deliveries missing; subscribers dropped as slow);
the api process's RSS before subscribing, after, and after the events (memory per subscriber); and
the check that the client is not what is measured: the client process's CPU over the event phase
and its event-loop lag (a 10 ms ticker's overshoot, p99/max), beside the api's CPU. A delivery time
is late by at most the client's loop lag, so a lag far below the p99 says the client is not the
bottleneck. Raw sockets rather than httpx: with 100 subscribers and 40 events, httpx streams
(`aiter_lines`) cost the client about 3 times the CPU per delivered event of these Protocols (0.31 s
against 0.095 s for 4,000 deliveries, measured once on the loaded 2-core machine), and at 1,000
subscribers that CPU would be taken from the api under test.

    .venv/bin/python bench/sse_fanout.py [--quick] [--subscribers 1000] [--rate 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time

import redis.asyncio as aioredis
from apibench import TENANT, Rig, cpu_s, pct, pid_of, rig, rss_kib

from callcenter.contract.codec import encode
from callcenter.store.keys import Keys

TAG = re.compile(rb"bench-(\d+)-(\d+)")  # in the event's reason: sequence number, send time (perf_counter_ns)


class SseClient(asyncio.Protocol):
    """One subscriber: sends the request, then timestamps each complete SSE event as it arrives."""

    def __init__(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.opened: asyncio.Future[None] = loop.create_future()   # ": connected" received
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.seqs: list[int] = []
        self.latencies_ns: list[int] = []
        self.dropped = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()  # first: parsing below does not delay the stamp
        buf = self.tail + data
        end = buf.rfind(b"\n\n")  # SSE events end with a blank line; keep a partial one for later
        if end < 0:
            self.tail = buf
            if not self.opened.done() and b"\r\n\r\n" in buf and not buf.startswith(b"HTTP/1.1 200"):
                self.opened.set_exception(RuntimeError(buf[:300].decode(errors="replace")))  # a refusal
            return
        self.tail, done = buf[end + 2:], buf[:end]
        if not self.opened.done():
            if not done.startswith(b"HTTP/1.1 200"):
                self.opened.set_exception(RuntimeError(done[:200].decode(errors="replace")))
                return
            self.opened.set_result(None)
        for m in TAG.finditer(done):
            self.seqs.append(int(m[1]))
            self.latencies_ns.append(now - int(m[2]))
        if b"event: dropped" in done:
            self.dropped = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the feed opened"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def subscribe(port: int, key: str, n: int, limit_s: float) -> list[SseClient]:
    """N open subscribers (at most 50 connecting at once); raises if any is not open within `limit_s`."""
    loop = asyncio.get_running_loop()
    request = (f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
               f"Accept: text/event-stream\r\n\r\n").encode()
    gate = asyncio.Semaphore(50)

    async def one() -> SseClient:
        async with gate:
            client = SseClient(request)
            await loop.create_connection(lambda: client, "127.0.0.1", port)
            await client.opened
            return client
    async with asyncio.timeout(limit_s):
        return list(await asyncio.gather(*(one() for _ in range(n))))


async def ticker(lags_ms: list[float], stop: asyncio.Event) -> None:
    """The event loop's lag: how late a 10 ms sleep wakes up."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.01)
        lags_ms.append((time.perf_counter() - t0 - 0.01) * 1000)


async def publish(r: aioredis.Redis, stream: str, rate: float, n: int) -> None:
    """N agent.paused events at a paced `rate`, each stamped with its send time just before XADD."""
    t_start = time.perf_counter()
    for seq in range(n):
        delay = t_start + seq / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter_ns()
        fields = encode("agent.paused", {"ts": int(time.time() * 1000), "agent_id": "bench",
                                         "reason": f"bench-{seq}-{sent}"})
        await r.xadd(stream, fields)  # type: ignore[arg-type]  # encode's values are valid XADD fields


async def wait_delivered(clients: list[SseClient], n: int, limit_s: float) -> None:
    """Until every client has n events or was dropped, for at most `limit_s`."""
    for _ in range(int(limit_s / 0.05)):
        if all(len(c.seqs) >= n or c.dropped for c in clients):
            return
        await asyncio.sleep(0.05)


async def bench(r: Rig, subscribers: int, rate: float, seconds: float) -> None:
    key = r.key(name="bench-supervisor", role="supervisor")
    svc, url = r.api()
    pid, port = pid_of(svc), int(url.rsplit(":", 1)[1])
    n_events = max(1, int(rate * seconds))
    redis = aioredis.Redis.from_url(r.server.url)
    try:
        warm = await subscribe(port, key, 1, 30)  # the first subscriber starts the feed's reader task
        for c in warm:
            c.close()
        await asyncio.sleep(0.5)
        rss0 = rss_kib(pid)
        t0 = time.perf_counter()
        clients = await subscribe(port, key, subscribers, 120)
        took = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # let the api settle (allocations after the last ": connected")
        rss1 = rss_kib(pid)
        print(f"sse fan-out: {subscribers} subscribers on one api process (subscribed in {took:.1f} s), "
              f"{n_events} events at {rate:g}/s; python {sys.version.split()[0]}")
        lags: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(lags, stop))
        api0, own0, w0 = cpu_s(pid), time.process_time(), time.perf_counter()
        await publish(redis, Keys(TENANT).events, rate, n_events)
        await wait_delivered(clients, n_events, limit_s=max(5.0, 2 * seconds))
        wall = time.perf_counter() - w0
        api_cpu, own_cpu = cpu_s(pid) - api0, time.process_time() - own0
        stop.set()
        await tick
        rss2 = rss_kib(pid)
        lat = [ns / 1e6 for c in clients for ns in c.latencies_ns]
        complete = sum(1 for c in clients if c.seqs == list(range(n_events)))
        missing = subscribers * n_events - sum(len(set(c.seqs)) for c in clients)
        print(f"event -> delivered: n={len(lat)}  p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms  "
              f"max {max(lat, default=float('nan')):.2f} ms")
        print(f"completeness: {complete}/{subscribers} subscribers got every event in order once; "
              f"{missing} deliveries missing; {sum(c.dropped for c in clients)} dropped as slow")
        print(f"api RSS: {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB subscribed, "
              f"{rss2 / 1024:.1f} MiB after the events; per subscriber {(rss1 - rss0) / subscribers:.1f} KiB "
              f"({(rss2 - rss0) / subscribers:.1f} KiB after the events)")
        print(f"client check: client CPU {own_cpu / wall:.0%} of a core, event-loop lag p99 {pct(lags, 0.99):.2f} ms "
              f"max {max(lags, default=float('nan')):.2f} ms; api CPU {api_cpu / wall:.0%} of a core "
              f"({api_cpu * 1e6 / max(1, len(lat)):.1f} µs per delivery)")
        for c in clients:
            c.close()
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 10)
    finally:
        await redis.aclose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 100 subscribers, 20 events")
    ap.add_argument("--subscribers", type=int, default=1000, help="concurrent SSE subscribers (default 1000)")
    ap.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long events are sent (default 10)")
    args = ap.parse_args()
    if args.quick:
        args.subscribers, args.rate, args.seconds = 100, 20.0, 1.0
    with rig() as r:
        await bench(r, args.subscribers, args.rate, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
