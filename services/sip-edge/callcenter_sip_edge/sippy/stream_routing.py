"""Which transport each message of the edge's sippy stack leaves by, and stream messages in.

Reads: a request's target (address and transport, from its URI's `transport=` or `sips:` scheme),
the rendered size of a request to a UDP target. Writes: the server sippy sends through (UDP, or a
`streams.StreamServer`), and the messages the stream transports framed into the transaction manager.

Knows sippy's private names (`newTransaction`, `transmitData`, `SipTransaction`, `handleIncoming`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from callcenter_sip_edge.screening import screen_datagram
from callcenter_sip_edge.sippy.websocket import WS_TRANSPORTS, NoRoute, via_says_ws
from callcenter_sip_edge.sippy.websocket import refuse as ws_refuse
from callcenter_sip_edge.sippy.websocket import route as ws_route

# RFC 3261 18.1.1: a request within 200 bytes of the path MTU (1,500), or over 1,300 bytes when
# the MTU is unknown, goes by a congestion-controlled transport (TCP) instead of UDP
UDP_SIZE_LIMIT_BYTES = 1300


def with_stream_routing(tm_class: type, *, max_stream_message_bytes: int, large_udp_by_tcp: bool,
                        on_screened: Callable[[str, str, int | None], None]) -> type:
    """`tm_class` (a SipTransactionManager) that sends over TCP or TLS where the target asks for it,
    switches a request over 1,300 bytes to a UDP target to TCP, and takes in stream messages
    (`handle_stream_message`). Its `stream_servers` (transport -> server) are set after start."""
    from sippy.Core.Exceptions import dump_exception
    from sippy.Network_server import Remote_address
    from sippy.SipTransactionManager import SipTransaction, SipTransactionManager
    from sippy.Time.MonoTime import MonoTime

    via_says_ws()

    class StreamRoutingTransactionManager(tm_class):  # type: ignore[misc]
        stream_servers: dict[str, Any] = {}
        _sizing: Any = None   # the new UDP client transaction whose first send is being made

        def newTransaction(self, msg: Any, resp_cb: Any = None, laddress: Any = None, userv: Any = None,
                           cb_ifver: int = 1, compact: bool = False, t: Any = None) -> Any:
            no_route = False
            if userv is None and self.stream_servers:
                transport = str(msg.getTarget()[1]).lower()
                if transport in WS_TRANSPORTS:
                    # a WebSocket peer only over its live connection (RFC 7118 5.2), else 430 at once
                    server = self.stream_servers.get(transport) or next(
                        (self.stream_servers[n] for n in WS_TRANSPORTS if n in self.stream_servers), None)
                    if server is not None:
                        userv = ws_route(server.streams, msg.getTarget()[0])
                        if userv is None:
                            userv, no_route = NoRoute(server), True
                elif transport in self.stream_servers:
                    userv = self.stream_servers[transport]
                elif transport == "udp" and large_udp_by_tcp and "tcp" in self.stream_servers:
                    # look at the size once it is rendered, in transmitData (no second render
                    # for the messages that fit)
                    t = t if t is not None else SipTransaction()
                    t.cc_msg = msg
                    self._sizing = t
            try:
                t = super().newTransaction(msg, resp_cb, laddress, userv, cb_ifver, compact, t)
            finally:
                if self._sizing is not None:
                    self._sizing.cc_msg = self._sizing = None
            if no_route:
                ws_refuse(self, t, msg)
            if getattr(t.userv, "reliable", False) and t.teA is not None:
                # a request over TCP/TLS is not retransmitted (RFC 3261 17.1.1.2, 17.1.2.2: timers A
                # and E are for unreliable transports); timer B/F still ends an unanswered one
                t.teA.cancel()
                t.teA = None
            return t

        def transmitData(self, userv: Any, data: Any, address: Any, cachesum: Any = None,
                         lossemul: int = 0) -> None:
            t = self._sizing
            if t is not None and data is t.data and len(data) > UDP_SIZE_LIMIT_BYTES:
                self._sizing = None
                tcp = self.stream_servers["tcp"]
                t.userv = userv = tcp
                t.data = data = t.cc_msg.localStr(tcp.getSIPaddr(), compact=t.compact)
                t.cc_msg = None
            super().transmitData(userv, data, address, cachesum, lossemul)

        def handle_stream_message(self, data: bytes, peer: tuple[str, int], conn: Any) -> None:
            """The edge's loop: one framed message from a TCP/TLS connection (`conn` is the server its
            transaction answers through)."""
            host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            ra = Remote_address((host, peer[1]), getattr(conn, "remote_transport", conn.transport))
            verdict = screen_datagram(data, max_stream_message_bytes)
            if verdict.drop_reason is None:
                try:
                    SipTransactionManager.handleIncoming(self, data, ra, conn, MonoTime())
                except Exception:
                    # as sippy's own servers do (Network_server.handle_read): the message is lost,
                    # the reactor and the other messages of the batch go on
                    dump_exception(f"unhandled exception on a message from {ra}")
                return
            on_screened(verdict.drop_reason, f"{peer[0]}:{peer[1]}", None if verdict.reply is None else 400)
            if verdict.reply is not None:
                conn.send_to(verdict.reply, ra.address)

    return StreamRoutingTransactionManager
