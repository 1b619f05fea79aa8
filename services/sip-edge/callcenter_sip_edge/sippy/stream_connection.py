"""One SIP connection over TCP or TLS of the edge (`streams.py` runs them): framing by
Content-Length, the Via alias it is found again by, its writes; the asyncio protocols reading it.

Reads: the bytes of one connection (on the streams' loop thread). Writes: each framed message to
`StreamTransports.deliver`, what the reactor sends to the connection's socket.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callcenter_sip_edge.sippy.streams import StreamServer

MAX_START_LINE_BYTES = 2048
PLAIN_TRANSPORTS = ("tcp", "ws")     # the others (tls, wss) begin with a TLS handshake
# what may wait unsent for one connection before it is closed (its peer does not read)
WRITE_BACKLOG_BYTES = 1024 * 1024
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_START_LINE = re.compile(rb"^(?:SIP/2\.0 \d{3} |[A-Za-z]+ \S+ SIP/2\.0$)")
_VIA_SENT_BY = re.compile(rb"^(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*\w+[ \t]+([^;,\s]+)",
                          re.IGNORECASE | re.MULTILINE)


def bare_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") else host


class Connection:
    """One TCP or TLS connection (accepted or opened by us), and the asyncio protocol reading it."""

    reliable = True

    def __init__(self, server: StreamServer, *, outgoing: bool) -> None:
        self.server = server
        self.streams = server.streams
        self.transport_name = server.transport
        self.uopts = server.uopts
        self.outgoing = outgoing
        self.peer: tuple[str, int] = ("", 0)
        self.aliases: set[tuple[str, int]] = set()
        self.writer: asyncio.Transport | None = None
        self.pending: list[bytes] = []       # sent before the connection was up
        self.closed = False
        self.buffer = bytearray()
        now = time.monotonic()
        self.last_activity = now
        self.message_started: float | None = None
        self.ready = False                   # TLS: handshake done

    # -- as sippy sees it (the edge's loop) ----------------------------------------------
    @property
    def transport(self) -> str:
        return self.transport_name

    def getSIPaddr(self) -> Any:
        return self.server.getSIPaddr()

    def addr2str(self, address: Any) -> str:
        return self.server.addr2str(address)

    def send_to(self, data: Any, address: Any, delayed: bool = False) -> None:
        self.streams.call(self.streams.send_on, self, as_bytes(data), (str(address[0]), int(address[1])))

    # -- loop thread ----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.writer is None or not self.ready:
            self.pending.append(data)
            return
        self.last_activity = time.monotonic()
        self.writer.write(data)
        if self.writer.get_write_buffer_size() > WRITE_BACKLOG_BYTES:
            self.fail("write_backlog")   # a peer that does not read what we send it

    def up(self) -> None:
        self.ready = True
        pending, self.pending = self.pending, []
        for data in pending:
            self.write(data)

    def feed(self, data: bytes) -> None:
        """Frame what arrived into SIP messages; close the connection on a breach."""
        now = time.monotonic()
        self.last_activity = now
        buf = self.buffer
        buf += data
        limit = self.streams.options.max_message_bytes
        while buf:
            if buf.startswith(b"\r\n"):
                if buf.startswith(b"\r\n\r\n"):
                    del buf[:4]
                    self.write(b"\r\n")   # keep-alive pong (RFC 5626 4.4.1)
                else:
                    del buf[:2]
                continue
            if self.message_started is None:
                self.message_started = now
            if not (65 <= buf[0] <= 90 or 97 <= buf[0] <= 122):
                return self.fail("garbage")   # no start line begins so (a method or SIP/2.0)
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > MAX_START_LINE_BYTES:
                    return self.fail("garbage")
                return None
            if _START_LINE.match(bytes(buf[:line_end])) is None:
                return self.fail("garbage")
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buf) > limit:
                    return self.fail("oversize")
                return None
            head = bytes(buf[:head_end])
            lengths = set(_CONTENT_LENGTH.findall(head))
            if len(lengths) != 1:
                return self.fail("bad_content_length")
            total = head_end + 4 + int(lengths.pop())
            if total > limit:
                return self.fail("oversize")
            if len(buf) < total:
                return None
            message = bytes(buf[:total])
            del buf[:total]
            self.message_started = None
            if not message.startswith(b"SIP/2.0 "):
                self._learn_alias(head)
            self.streams.deliver(message, self)
        return None

    def _learn_alias(self, head: bytes) -> None:
        match = _VIA_SENT_BY.search(head)
        if match is None:
            return
        host, _, port = match.group(1).decode("ascii", "replace").rpartition(":")
        if not host or not port.isdigit():
            return
        if bare_host(host) == self.peer[0] and (bare_host(host), int(port)) not in self.aliases:
            self.streams.add_alias(self, (bare_host(host), int(port)))

    def fail(self, cause: str) -> None:
        self.streams.log.emit("warning", "sip.stream_closed", cause, transport=self.transport_name,
                              source=f"{self.peer[0]}:{self.peer[1]}", reason=cause)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.writer is not None:
            self.writer.close()
        self.streams.forget(self)


class ConnectionProtocol(asyncio.Protocol):
    """Feeds a Connection what its socket reads; a connection opened by us (TCP: at once)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        conn = self.connection
        conn.writer = transport  # type: ignore[assignment]
        if conn.transport_name in PLAIN_TRANSPORTS or conn.ready:
            conn.up()

    def data_received(self, data: bytes) -> None:
        self.connection.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.connection
        conn.writer = None
        conn.close()


class AcceptedProtocol(ConnectionProtocol):
    """An accepted connection: the per-source limit, then (TLS) the handshake within its timeout."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        conn, streams = self.connection, self.connection.streams
        if not streams.admit(conn, transport):  # type: ignore[arg-type]
            return
        if conn.transport_name in PLAIN_TRANSPORTS:
            super().connection_made(transport)
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        streams.loop.create_task(self._handshake(transport))  # type: ignore[arg-type]

    async def _handshake(self, transport: asyncio.Transport) -> None:
        conn, streams = self.connection, self.connection.streams
        conn.message_started = None
        started = time.monotonic()
        try:
            tls_transport = await asyncio.wait_for(streams.loop.start_tls(
                transport, self, streams.server_tls,  # type: ignore[arg-type]
                server_side=True, ssl_handshake_timeout=streams.options.handshake_timeout_s),
                streams.options.handshake_timeout_s + 1.0)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            # asyncio aborts a handshake over its timeout with ConnectionAbortedError: tell by the time
            timed_out = time.monotonic() - started >= streams.options.handshake_timeout_s
            cause = "handshake_timeout" if timed_out else "handshake_failed"
            streams.log.emit("warning", "sip.stream_closed", cause, transport="tls",
                             source=f"{conn.peer[0]}:{conn.peer[1]}", reason=cause, error=str(exc))
            transport.abort()
            conn.close()
            return
        if tls_transport is None:
            conn.close()
            return
        conn.writer = tls_transport
        conn.last_activity = time.monotonic()
        conn.up()


def as_bytes(data: Any) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8")
