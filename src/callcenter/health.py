"""A tiny HTTP health endpoint for the services that have no HTTP server of their own.

GET /healthz answers 200 while the process's main loop is alive; GET /readyz answers 200 when the
service's readiness check passes (e.g. Redis reachable, consumer looping), else 503. GET /metrics
answers the process's Prometheus metrics (`callcenter.metrics`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from callcenter import metrics

log = structlog.get_logger(__name__)

ReadyCheck = Callable[[], Awaitable[bool]]


async def serve_health(host: str, port: int, ready: ReadyCheck) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            path = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else ""
            if path == "/metrics":
                body = metrics.exposition()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + metrics.CONTENT_TYPE.encode()
                             + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                             + body)
                return
            if path == "/healthz":
                ok = True
            elif path == "/readyz":
                try:
                    ok = await asyncio.wait_for(ready(), timeout=2)
                except Exception:
                    ok = False
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            body = b"ok\n" if ok else b"not ready\n"
            status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            try:
                await writer.drain()
                writer.close()
            except ConnectionError:
                pass

    server = await asyncio.start_server(handle, host, port)
    log.info("health.listening", host=host, port=port)
    return server
