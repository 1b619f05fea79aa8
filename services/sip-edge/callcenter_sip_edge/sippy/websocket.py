"""SIP over WebSocket (RFC 7118) for the edge's stream transports: `ws` (plain, for labs and
tests) and `wss` (TLS with the edge's certificate, the only one for production).

Reads: the bytes of an accepted connection on the streams' loop thread (`streams.py` runs it as it
runs TCP and TLS): the HTTP Upgrade, then WebSocket frames (wsproto, sans-I/O). Writes: the HTTP
answer (101 with `Sec-WebSocket-Protocol: sip`, or a 4xx saying why not), each complete WebSocket
message (one SIP message) to `StreamTransports.deliver`, and each SIP message the reactor sends as
one text frame.

A browser cannot be connected to: it names itself with a `.invalid` host in its Via and Contact
(RFC 7118 5.2). So a request to a `transport=ws`/`wss` URI is sent only over the live connection
its host was learnt on (`route`); with none, the transaction fails at once (`refuse`) with
430 Flow Failed (RFC 5626 11), reported like an unreachable agent, so the dispatcher re-offers.

Limits: a message (and so a frame) over `max_message_bytes` closes the connection (1009), an
Upgrade not complete within `ws_handshake_timeout_s` or over 16 KiB or not HTTP at all closes it,
the idle and per-source limits are the streams' own.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from callcenter_sip_edge.sippy.stream_connection import WRITE_BACKLOG_BYTES, Connection

if TYPE_CHECKING:
    from callcenter_sip_edge.sippy.streams import StreamServer, StreamTransports

WS_TRANSPORTS = ("ws", "wss")
MAX_UPGRADE_BYTES = 16 * 1024
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008
# hosts one connection may name itself by (a browser uses one or two: its Via and Contact hosts)
MAX_HOSTS_PER_CONNECTION = 4
# the hosts a browser names itself by: its Via sent-by and its Contact (either may be reused)
_VIA_HOST = re.compile(rb"^(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*\w+[ \t]+([^;,:\s]+)",
                       re.IGNORECASE | re.MULTILINE)
_CONTACT_HOST = re.compile(rb"^(?:contact|m)[ \t]*:[^\r\n]*?sips?:(?:[^@\r\n>;]*@)?([^;>:\s]+)",
                           re.IGNORECASE | re.MULTILINE)


class WsConnection(Connection):
    """One accepted WebSocket connection carrying SIP; `write` sends a SIP message as one frame."""

    def __init__(self, server: StreamServer) -> None:
        super().__init__(server, outgoing=False)
        self.ws = WSConnection(ConnectionType.SERVER)
        self.upgraded = False
        self.upgrade_bytes = 0
        self.parts: list[bytes] = []
        self.part_bytes = 0
        self.hosts: set[str] = set()
        self.early: list[bytes] = []

    @property
    def remote_transport(self) -> str:
        # what sippy is told the message came by: not 'wss', for which sippy rewrites the Contact
        # host to the peer's IP (several browsers behind one NAT would share it)
        return "ws"

    # -- loop thread ------------------------------------------------------------------
    def up(self) -> None:
        """TCP accepted (ws) or TLS done (wss): the Upgrade must now come within its time."""
        self.ready = True
        self.message_started = None
        timeout = self.streams.options.ws_handshake_timeout_s
        self.streams.loop.call_later(timeout, self._upgrade_expired)
        early, self.early = self.early, []
        for data in early:
            if not self.closed:
                self._process(data)

    def _upgrade_expired(self) -> None:
        if not self.upgraded and not self.closed:
            self.fail("ws_handshake_timeout")

    def write(self, data: bytes) -> None:
        """A SIP message from the reactor: one text frame (queued until the Upgrade is done)."""
        if not self.upgraded:
            self.pending.append(data)
            return
        self._send(TextMessage(data=data.decode("utf-8", "replace")))

    def _send(self, event: Any) -> None:
        if self.writer is None or self.closed or not self.ready:
            return
        self.last_activity = time.monotonic()
        try:
            self.writer.write(self.ws.send(event))
        except LocalProtocolError:   # the WebSocket is closing: nothing more goes out
            return
        if self.writer.get_write_buffer_size() > WRITE_BACKLOG_BYTES:
            self.fail("write_backlog")   # a peer that does not read what we send it

    def feed(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if not self.upgraded:
            self.upgrade_bytes += len(data)
            if self.upgrade_bytes > MAX_UPGRADE_BYTES:
                return self._refuse_upgrade(431, "upgrade request too large", "ws_upgrade_oversize")
        if not self.ready:
            # wss: the Upgrade may be read before start_tls has returned the TLS transport that
            # answers go on; it waits for up()
            self.early.append(data)
            return None
        return self._process(data)

    def _process(self, data: bytes) -> None:
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if self.closed:
                    return None
                self._on_event(event)
        except RemoteProtocolError as exc:
            if not self.upgraded:
                return self._refuse_upgrade(400, str(exc), "garbage")
            return self._close_with(CLOSE_POLICY, "protocol_error")
        return None

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Request):
            self._upgrade(event)
        elif isinstance(event, (TextMessage, BytesMessage)):
            self._frame(event)
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, CloseConnection):
            self._send(event.response())
            self.close()

    def _upgrade(self, request: Request) -> None:
        if "sip" not in [p.lower() for p in request.subprotocols]:
            return self._refuse_upgrade(400, "Sec-WebSocket-Protocol must offer 'sip' (RFC 7118)", "ws_no_sip")
        allowed = self.streams.options.ws_allowed_origins
        if allowed:
            origin = next((v.decode("latin-1") for k, v in request.extra_headers if k.lower() == b"origin"), "")
            if origin not in allowed:
                return self._refuse_upgrade(403, "origin not allowed", "ws_origin", origin=origin)
        self._send(AcceptConnection(subprotocol="sip"))
        self.upgraded = True
        pending, self.pending = self.pending, []
        for data in pending:
            self.write(data)
        return None

    def _frame(self, event: TextMessage | BytesMessage) -> None:
        part = event.data.encode("utf-8") if isinstance(event.data, str) else bytes(event.data)
        if self.message_started is None:
            self.message_started = time.monotonic()
        self.part_bytes += len(part)
        if self.part_bytes > self.streams.options.max_message_bytes:
            self._close_with(CLOSE_TOO_BIG, "oversize")
            return
        self.parts.append(part)
        if not event.message_finished:
            return
        message = b"".join(self.parts)
        self.parts, self.part_bytes, self.message_started = [], 0, None
        if not message.strip():
            return   # a keep-alive
        if not message.startswith(b"SIP/2.0 "):
            self._learn_hosts(message.split(b"\r\n\r\n", 1)[0])
        self.streams.deliver(message, self)

    def _learn_hosts(self, head: bytes) -> None:
        for pattern in (_VIA_HOST, _CONTACT_HOST):
            match = pattern.search(head)
            if match is None:
                continue
            host = match.group(1).decode("ascii", "replace").lower()
            if host not in self.hosts:
                if len(self.hosts) >= MAX_HOSTS_PER_CONNECTION:
                    continue   # a client naming ever new hosts does not grow the table
                self.hosts.add(host)
            # the newest connection naming a host takes it (a browser that reconnected)
            self.streams.ws_hosts[host] = self

    def _refuse_upgrade(self, status: int, why: str, cause: str, **fields: str) -> None:
        body = f"{why}\n".encode()
        try:
            if self.writer is not None and self.ready:
                self.writer.write(self.ws.send(RejectConnection(
                    status_code=status, has_body=True,
                    headers=[(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())])))
                self.writer.write(self.ws.send(RejectData(data=body)))
        except Exception:   # the handshake state does not allow an answer: close without one
            pass
        self.streams.log.emit("warning", "sip.stream_closed", cause, transport=self.transport_name,
                              source=f"{self.peer[0]}:{self.peer[1]}", reason=cause, status=status, **fields)
        self.close()

    def _close_with(self, code: int, cause: str) -> None:
        try:
            self._send(CloseConnection(code=code, reason=cause))
        except Exception:
            pass
        self.fail(cause)

    def close(self) -> None:
        for host in self.hosts:
            if self.streams.ws_hosts.get(host) is self:
                del self.streams.ws_hosts[host]
        self.hosts.clear()
        super().close()


def route(streams: StreamTransports, address: Any) -> Connection | None:
    """The edge's loop: the live WebSocket connection a request to `address` ((host, port) of a
    `transport=ws`/`wss` URI) goes over, by the host the browser named itself with, or by its
    address; None if there is none (a dict read, atomic under the GIL)."""
    host = str(address[0]).lower().strip("[]")
    conn = streams.ws_hosts.get(host)
    if conn is None:
        for name in WS_TRANSPORTS:
            conn = streams.connections.get((name, host, int(address[1])))
            if conn is not None:
                break
    if conn is None or conn.closed:
        return None
    return conn


class NoRoute:
    """What a transaction to a WebSocket peer without a live connection is 'sent' through: nothing
    leaves; `refuse` answers it."""

    reliable = True

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.transport = server.transport
        self.uopts = server.uopts

    def getSIPaddr(self) -> Any:
        return self.server.getSIPaddr()

    def addr2str(self, address: Any) -> str:
        return self.server.addr2str(address)

    def send_to(self, data: Any, address: Any, delayed: bool = False) -> None:
        return None


def refuse(tm: Any, t: Any, msg: Any) -> None:
    """The edge's loop: end client transaction `t` (sent through a `NoRoute`) with 430 Flow Failed
    at the reactor's next turn, as its timer B would with 408, so its UA fails at once."""
    from sippy.SipTransactionManager import TERMINATED
    from sippy.Time.MonoTime import MonoTime
    from sippy.Time.Timeout import Timeout

    response = msg.genResponse(430, "Flow Failed")

    def fail() -> None:
        if t.teB is not None:
            t.teB.cancel()
            t.teB = None
        if t.state == TERMINATED:
            return
        t.state = TERMINATED
        t.teC = Timeout(tm.timerC, 32.0, 1, t)
        if t.resp_cb is None:
            return
        response.rtime = MonoTime()
        if t.cb_ifver == 1:
            t.resp_cb(response)
        else:
            t.resp_cb(response, t)

    Timeout(fail, 0.0, 1)


def via_says_ws() -> None:
    """Patch sippy's Via rendering, once: sippy writes `SIP/2.0/WSS` for a message sent over plain
    ws too; RFC 7118 5.1 has `WS` for it (the edge's own Via only, whose transport sippy fills in)."""
    from sippy.SipVia import SipVia

    if getattr(SipVia, "cc_ws_via", False):
        return
    original = SipVia.localStr

    def localStr(self: Any, local_addr: Any = None) -> str:
        text = str(original(self, local_addr))
        if local_addr is not None and str(local_addr[1]).lower() == "ws" and "my" in dir(self.transport):
            text = text.replace("/WSS ", "/WS ", 1)
        return text

    SipVia.localStr = localStr
    SipVia.cc_ws_via = True
