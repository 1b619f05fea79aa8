"""SIP over TCP and TLS for the edge's sippy stack (sippy 2.5.0 has UDP and WSS only).

Reads: bytes from accepted and outgoing TCP/TLS connections, on an asyncio loop in its own thread
("sip-streams"). Writes: each framed SIP message to sippy's transaction manager on the edge's
loop (a reactor turn, `reactor.LoopReactor.from_any_thread`), and what sippy sends back to the
connections. The streams keep a thread of their own: their listeners, TLS handshakes and
connections are built on their own loop, which the edge's loop hands messages to in batches.

sippy sees two objects per transport: a `StreamServer` (what `newTransaction` sends requests
through: it picks an open connection to the target, or opens one) and each `Connection` (the
`server` a message arrived on, so the responses of a transaction go back on the connection its
request came in on, RFC 3261 18.2.2). Both offer what sippy asks of a UDP server: `transport`,
`uopts`, `getSIPaddr()` (Via and Contact are rendered with it: `SIP/2.0/TCP`, `;transport=tcp`),
`send_to(data, address)`, `addr2str`.

Connection reuse: a connection is found again by its peer address and by the Via sent-by of the
requests that came in on it when that names the same IP (RFC 5923's alias, taken without the
`alias` parameter: a peer such as SIPp listens where its Via says, and may connect from another
port). Framing is by Content-Length (RFC 3261 18.3); CRLFs before a start line are skipped and a
double CRLF keep-alive gets a CRLF back (RFC 5626 4.4.1). Limits: connections per source IP,
message size, a deadline for a message once started (slowloris), an idle timeout, a TLS
handshake timeout; each breach closes the connection and is logged through a `RateLimitedLog`.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callcenter_sip_edge.log_limits import RateLimitedLog
from callcenter_sip_edge.sippy.stream_connection import (
    AcceptedProtocol,
    Connection,
    ConnectionProtocol,
    as_bytes,
    bare_host,
)
from callcenter_sip_edge.sippy.websocket import WS_TRANSPORTS, WsConnection, route

SWEEP_INTERVAL_S = 0.5
START_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class StreamOptions:
    """Where the edge takes SIP over TCP and TLS, and the limits it keeps there. A port of None
    turns that transport off; 0 asks the kernel for a free one."""

    tcp_port: int | None = None
    tls_port: int | None = None
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_cafile: str | None = None        # CAs a TLS peer we connect to must be signed by (None: system's)
    tls_verify_peer: bool = True
    max_message_bytes: int = 65535
    max_connections_per_source: int = 32
    idle_timeout_s: float = 300.0
    message_timeout_s: float = 10.0      # a message, once its first byte came, must be complete by then
    handshake_timeout_s: float = 5.0
    # a request over 1,300 bytes to a UDP target goes by TCP (RFC 3261 18.1.1); off for UDP-only
    # peers that get large requests (there is no fall-back to UDP when TCP cannot connect)
    large_udp_by_tcp: bool = True
    # SIP over WebSocket (RFC 7118, `websocket.py`): ws plain (labs, tests), wss with the TLS
    # certificate and key above; the Upgrade must be done within its timeout; with origins given,
    # an Upgrade from another Origin gets 403
    ws_port: int | None = None
    wss_port: int | None = None
    ws_handshake_timeout_s: float = 5.0
    ws_allowed_origins: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> StreamOptions:
        """From the edge's settings (`callcenter.settings.EdgeSettings`, CC_SIP_TCP_PORT, ...)."""
        s = settings
        return cls(tcp_port=s.sip_tcp_port, tls_port=s.sip_tls_port, tls_certfile=s.sip_tls_certfile,
                   tls_keyfile=s.sip_tls_keyfile, tls_cafile=s.sip_tls_cafile, tls_verify_peer=s.sip_tls_verify_peer,
                   max_message_bytes=s.sip_stream_max_message_bytes,
                   max_connections_per_source=s.sip_stream_max_connections_per_source,
                   idle_timeout_s=s.sip_stream_idle_timeout_s, message_timeout_s=s.sip_stream_message_timeout_s,
                   handshake_timeout_s=s.sip_tls_handshake_timeout_s, large_udp_by_tcp=s.sip_large_udp_by_tcp,
                   ws_port=s.sip_ws_port, wss_port=s.sip_wss_port, ws_handshake_timeout_s=s.sip_ws_handshake_timeout_s,
                   ws_allowed_origins=tuple(o.strip() for o in s.sip_ws_allowed_origins.split(",") if o.strip()))

    @property
    def enabled(self) -> bool:
        return any(p is not None for p in (self.tcp_port, self.tls_port, self.ws_port, self.wss_port))


class _Opts:
    """What sippy reads of a server's options."""

    def __init__(self, laddress: tuple[str, int]) -> None:
        self.laddress = laddress
        self.ploss_out_rate = 0.0
        self.pdelay_out_max = 0.0

    @staticmethod
    def isWildCard() -> bool:
        return False


class StreamServer:
    """One stream transport (tcp or tls) as sippy sees it. Methods are called on the edge's loop (sippy's);
    the connections live on the streams' loop."""

    reliable = True   # no retransmission of requests (stream_routing)

    def __init__(self, transport: str, streams: StreamTransports, sip_address: tuple[str, int]) -> None:
        self.transport = transport
        self.streams = streams
        self.uopts = _Opts(sip_address)
        self.sock: socket.socket | None = None                  # bound and listening
        self.listener: asyncio.base_events.Server | None = None  # serving it, on the loop

    def getSIPaddr(self) -> Any:
        return (self.uopts.laddress, self.transport)

    def addr2str(self, address: Any) -> str:
        return f"{self.transport}:{address[0]}:{address[1]}"

    def send_to(self, data: Any, address: Any, delayed: bool = False) -> None:
        self.streams.call(self.streams.send_to_target, self, as_bytes(data), (str(address[0]), int(address[1])))


class StreamTransports:
    """The TCP and TLS listeners and connections of one stack, on an asyncio loop in its own thread."""

    def __init__(self, options: StreamOptions, *, host: str, advertised_host: str | None,
                 deliver: Callable[[bytes, Any, Any], None], call_on_reactor: Callable[..., None]) -> None:
        """`deliver(message, peer, connection)` runs on the reactor (`call_on_reactor`, a turn that
        runs the due timers after it), in batches."""
        self.options = options
        self.host = host
        self.advertised_host = advertised_host or host
        self._deliver = deliver
        # both directions are batched: one wake-up of the other thread for whatever piled up, not
        # one per message (each is a system call and a fight for the GIL). A flag is cleared by
        # the consumer before it empties its queue, so an item put meanwhile is taken or wakes it again.
        self._inbox: deque[tuple[bytes, tuple[str, int], Connection]] = deque()
        self._inbox_waking = False
        self._outbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._outbox_waking = False
        self._call_on_reactor = call_on_reactor
        self.log = RateLimitedLog()
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self.servers: dict[str, StreamServer] = {}
        self.connections: dict[tuple[str, str, int], Connection] = {}
        self.ws_hosts: dict[str, Connection] = {}   # host a browser named itself by -> its connection
        self.per_source: dict[str, int] = {}
        self.live: set[Connection] = set()
        self.server_tls: ssl.SSLContext | None = None
        self.client_tls: ssl.SSLContext | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="sip-streams", daemon=True)

    # -- start and stop (the edge's loop) --------------------------------------------------
    def start(self) -> None:
        """Bind the listeners (raise if a port is taken), then run the loop in its thread."""
        opts = self.options
        if opts.tls_port is not None or opts.wss_port is not None:
            if not opts.tls_certfile or not opts.tls_keyfile:
                raise ValueError("TLS and WSS need a certificate and a key (CC_SIP_TLS_CERTFILE, CC_SIP_TLS_KEYFILE)")
            self.server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.server_tls.load_cert_chain(opts.tls_certfile, opts.tls_keyfile)
            self.client_tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts.tls_cafile)
            if not opts.tls_verify_peer:
                self.client_tls.check_hostname = False
                self.client_tls.verify_mode = ssl.CERT_NONE
        for name, port in (("tcp", opts.tcp_port), ("tls", opts.tls_port), ("ws", opts.ws_port),
                           ("wss", opts.wss_port)):
            if port is None:
                continue
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            try:
                # a listening TCP port may be bound again at once after a restart (TIME_WAIT), but
                # never while another process listens on it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((bare_host(self.host), port))
                sock.listen(512)
                sock.setblocking(False)
            except OSError:
                sock.close()
                self._close_listeners()
                raise
            server = StreamServer(name, self, (self.advertised_host, sock.getsockname()[1]))
            server.sock = sock
            self.servers[name] = server
        # served from the streams' thread: the calling thread runs the edge's own loop
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(START_TIMEOUT_S)
        except BaseException:
            self.shutdown()
            raise

    async def _serve(self) -> None:
        for server in self.servers.values():
            server.listener = await self.loop.create_server(
                lambda s=server: AcceptedProtocol(self._accepted(s)), sock=server.sock)  # type: ignore[misc, arg-type]
        self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _close_listeners(self) -> None:
        for server in self.servers.values():
            if server.listener is None and server.sock is not None:
                server.sock.close()

    def port(self, transport: str) -> int:
        return int(self.servers[transport].uopts.laddress[1])

    def shutdown(self) -> None:
        """Close the listeners and every connection; stop the loop (bounded wait)."""
        if not self._thread.is_alive():
            self._close_listeners()
            self.loop.close()
            return
        done = threading.Event()

        def stop() -> None:
            for server in self.servers.values():
                if server.listener is not None:
                    server.listener.close()
            for conn in list(self.live):
                conn.close()
            self.loop.stop()
            done.set()

        self.loop.call_soon_threadsafe(stop)
        done.wait(2.0)
        self._thread.join(2.0)
        self._close_listeners()   # those a failed start left unserved

    # -- thread hand-over -----------------------------------------------------------------
    def call(self, fn: Callable[..., None], *args: Any) -> None:
        """The edge's loop -> the streams' loop: `fn(*args)` there, in order."""
        self._outbox.append((fn, args))
        if not self._outbox_waking:
            self._outbox_waking = True
            try:
                self.loop.call_soon_threadsafe(self._run_outbox)
            except RuntimeError:   # the loop is closed: the stack is shutting down
                self._outbox.clear()

    def _run_outbox(self) -> None:
        self._outbox_waking = False
        outbox = self._outbox
        while outbox:
            fn, args = outbox.popleft()
            fn(*args)

    def deliver(self, message: bytes, conn: Connection) -> None:
        """Loop thread -> reactor: one framed message, with the connection it came on."""
        self._inbox.append((message, conn.peer, conn))
        if not self._inbox_waking:
            self._inbox_waking = True
            self._call_on_reactor(self._run_inbox)

    def _run_inbox(self) -> None:
        """Reactor (the edge's loop): the messages that arrived."""
        self._inbox_waking = False
        inbox, deliver = self._inbox, self._deliver
        while inbox:
            deliver(*inbox.popleft())

    # -- connections (loop thread) -----------------------------------------------------------
    def _accepted(self, server: StreamServer) -> Connection:
        conn = WsConnection(server) if server.transport in WS_TRANSPORTS else Connection(server, outgoing=False)
        self.live.add(conn)
        return conn

    def admit(self, conn: Connection, transport: asyncio.Transport) -> bool:
        """An accepted connection: counted against its source's limit (False: closed)."""
        peer = transport.get_extra_info("peername")
        conn.peer = (str(peer[0]), int(peer[1]))
        count = self.per_source.get(conn.peer[0], 0)
        if count >= self.options.max_connections_per_source:
            self.log.emit("warning", "sip.stream_refused", "too_many_connections", transport=conn.transport_name,
                          source=conn.peer[0], limit=self.options.max_connections_per_source)
            conn.closed = True
            self.live.discard(conn)
            transport.abort()
            return False
        self.per_source[conn.peer[0]] = count + 1
        self.connections[(conn.transport_name, *conn.peer)] = conn
        return True

    def add_alias(self, conn: Connection, address: tuple[str, int]) -> None:
        conn.aliases.add(address)
        self.connections[(conn.transport_name, *address)] = conn

    def forget(self, conn: Connection) -> None:
        self.live.discard(conn)
        for address in (conn.peer, *conn.aliases):
            key = (conn.transport_name, *address)
            if self.connections.get(key) is conn:
                del self.connections[key]
        if not conn.outgoing and conn.peer[0]:
            left = self.per_source.get(conn.peer[0], 1) - 1
            if left > 0:
                self.per_source[conn.peer[0]] = left
            else:
                self.per_source.pop(conn.peer[0], None)

    def send_on(self, conn: Connection, data: bytes, address: tuple[str, int]) -> None:
        """A response (or a request of a dialog) on the connection its transaction came in on; if
        that one has closed, to `address` over another (RFC 3261 18.2.2)."""
        if conn.closed:
            self.send_to_target(conn.server, data, address)
        else:
            conn.write(data)

    def send_to_target(self, server: StreamServer, data: bytes, address: tuple[str, int]) -> None:
        host, port = bare_host(address[0]), address[1]
        if server.transport in WS_TRANSPORTS:
            live = route(self, address)   # a browser cannot be connected to: its live connection or none
            if live is None:
                self.log.emit("warning", "sip.stream_no_route", server.transport, destination=f"{host}:{port}")
            else:
                live.write(data)
            return
        conn = self.connections.get((server.transport, host, port))
        if conn is None or conn.closed:
            conn = self._connect(server, host, port)
        conn.write(data)

    def _connect(self, server: StreamServer, host: str, port: int) -> Connection:
        conn = Connection(server, outgoing=True)
        conn.peer = (host, port)
        self.connections[(server.transport, host, port)] = conn
        self.live.add(conn)
        self.loop.create_task(self._open(conn))
        return conn

    async def _open(self, conn: Connection) -> None:
        host, port = conn.peer
        tls = self.client_tls if conn.transport_name == "tls" else None
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: ConnectionProtocol(conn), host, port, ssl=tls, server_hostname=host if tls else None,
                ssl_handshake_timeout=self.options.handshake_timeout_s if tls else None),
                self.options.handshake_timeout_s + 5.0)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            self.log.emit("warning", "sip.stream_connect_failed", type(exc).__name__, transport=conn.transport_name,
                          destination=f"{host}:{port}", error=str(exc))
            conn.pending.clear()
            conn.close()
            return
        if tls is not None:
            conn.up()

    def _sweep(self) -> None:
        """Close connections idle too long or whose message has been incomplete too long."""
        now = time.monotonic()
        opts = self.options
        for conn in list(self.live):
            if conn.message_started is not None and now - conn.message_started > opts.message_timeout_s:
                conn.fail("message_timeout")
            elif now - conn.last_activity > opts.idle_timeout_s:
                conn.fail("idle") if conn.buffer else conn.close()
        self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        cause = type(exc).__name__ if exc is not None else "error"
        self.log.emit("warning", "sip.stream_error", cause, message=str(context.get("message", "")),
                      error=str(exc) if exc is not None else "")

