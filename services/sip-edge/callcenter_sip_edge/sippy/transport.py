"""The edge's transport on sippy: its UDP server, its transaction manager, and the stack's set-up
and close.

Reads: datagrams from the UDP socket (a reader of the asyncio loop: `reactor.py`) and sippy's
configuration dict. Writes: datagrams to the socket and the configuration dict sippy's UAs are built
from (`make_sip_config`).

Knows sippy's private names (`global_config` keys such as `_sip_tm`, `l4r`, `uopts`); nothing
outside `callcenter_sip_edge.sippy` does.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from callcenter.metrics import SIP
from callcenter_sip_edge.guard import SourceGuard
from callcenter_sip_edge.log_limits import RateLimitedLog
from callcenter_sip_edge.screening import SIPPY_RECV_BYTES, screen_datagram
from callcenter_sip_edge.sippy import output, reactor
from callcenter_sip_edge.sippy.stream_routing import with_stream_routing
from callcenter_sip_edge.sippy.streams import StreamOptions, StreamTransports
from callcenter_sip_edge.sippy.trying import HeldTrying, is_held_trying

log = structlog.get_logger(__name__)

UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# datagrams read per loop callback before the due timers run and the loop's other ready callbacks
# (Redis replies, commands) get their turn. Small: a Redis exchange takes several loop iterations
# (reply read, future set, task resumed), each behind one batch; at 64 the edge's command read and
# report publish waited behind ~64 datagrams of parsing per step (bench/README.md, "one thread").
UDP_DRAIN_BATCH = 8
# a datagram the kernel refused (send buffer full) is tried again after this long
SEND_RETRY_S = 0.01

SipConfig = dict[str, Any]   # sippy's global_config
# the kernel's receive timestamp of each datagram (Linux; elsewhere the read time is used)
# (Python 3.11's socket module does not name it: Linux's value, 35 on x86 and arm, is used there)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
_TIMESTAMP_CMSG_BYTES = socket.CMSG_SPACE(16) if _SO_TIMESTAMPNS is not None else 0


def make_sip_config(*, host: str, port: int, user_agent: str, advertised_host: str | None,
                    max_message_bytes: int, on_screened: Callable[[str, str, int | None], None],
                    on_request: Callable[[Any, Any], Any], guard: SourceGuard,
                    limited_log: RateLimitedLog, streams: StreamOptions | None = None) -> SipConfig:
    """The configuration every UA of this stack is built from, with its transaction manager (which
    binds the UDP socket) already in it. `on_request` gets the requests that match no dialog;
    `guard` says which sources are trusted (in-dialog requests from others must come from a peer
    of their dialog); sippy's own output goes to `limited_log`. With `streams` enabled, TCP and
    TLS listen too (`streams.StreamTransports`, under `_cc_streams`)."""
    from sippy.SipConf import SipConf

    output.capture_sippy_output(limited_log)
    SipConf.my_uaname = user_agent
    tm_class = make_transaction_manager_class(
        max_message_bytes=max_message_bytes, advertised_host=advertised_host, on_screened=on_screened,
        guard=guard,
    )
    sip_config: SipConfig = {
        "_sip_address": host, "_sip_port": port, "_sip_logger": output.SipLoggerToLog(limited_log),
    }
    if streams is None or not streams.enabled:
        sip_config["_sip_tm"] = tm_class(sip_config, on_request)
        return sip_config
    tm_class = with_stream_routing(tm_class, max_stream_message_bytes=streams.max_message_bytes,
                                   large_udp_by_tcp=streams.large_udp_by_tcp, on_screened=on_screened)
    tm = sip_config["_sip_tm"] = tm_class(sip_config, on_request)
    transports = StreamTransports(streams, host=host, advertised_host=advertised_host,
                                  deliver=tm.handle_stream_message, call_on_reactor=reactor.current().from_any_thread)
    try:
        transports.start()
    except BaseException:
        tm.shutdown()
        raise
    tm.stream_servers = transports.servers
    sip_config["_cc_streams"] = transports
    return sip_config


def stream_ports(sip_config: SipConfig) -> dict[str, int]:
    """The TCP and TLS ports the stack listens on (port 0 asks the kernel for one); {} without."""
    transports = sip_config.get("_cc_streams")
    return {} if transports is None else {name: transports.port(name) for name in transports.servers}


def bound_address(sip_config: SipConfig) -> tuple[str, int]:
    """The (host, port) the stack's UDP socket is bound to (port 0 asks the kernel for one)."""
    servers = sip_config["_sip_tm"].l4r.cache_l2s.values()
    host, port = next(iter(servers)).uopts.laddress
    return str(host), int(port)


def close_stack(sip_config: SipConfig) -> None:
    """Close the stream transports and the transaction manager (and its sockets). The stack's
    timers are dropped with its reactor (`reactor.LoopReactor.close`)."""
    try:
        transports = sip_config.pop("_cc_streams", None)
        if transports is not None:
            transports.shutdown()
    finally:
        sip_config["_sip_tm"].shutdown()


def make_udp_server_class(advertised_host: str | None) -> tuple[type, type]:
    """Sippy's Udp_server, read from the asyncio loop, with a 4 MiB receive buffer and,
    optionally, an advertised address. Returns (server class, its options class), the pair
    `SipTransactionManager.model_udp_server` takes.

    Why not sippy's own threads: its Udp_server hands every datagram received to the reactor with
    ED2.callFromThread (a receiver thread) and every datagram sent to a sender thread through a
    Queue. At 150 calls/s (~3,000 datagrams/s) those two hand-offs per datagram, and the fight for
    the GIL they start each time, were about a fifth of the edge's samples. Here no thread reads the
    socket: the loop's selector says when it is readable, and a reader callback (a reactor turn)
    reads a bounded batch (non-blocking) and sends directly. A datagram to a host name still goes
    through sippy's sender thread, which resolves it off the loop (started at the first such send).

    The advertised host replaces the bound address wherever sippy renders its own address
    (Via, Contact, From of new legs), for an edge behind NAT or bound to 0.0.0.0.
    """
    from sippy.Network_server import Remote_address
    from sippy.Time.Timeout import Timeout
    from sippy.Udp_server import AsyncSender, Udp_server, Udp_server_opts

    class EdgeUdpServerOpts(Udp_server_opts):  # type: ignore[misc]
        nworkers = 0   # sippy starts no receiver and no sender thread of its own
        # sippy sets SO_REUSEADDR (and SO_REUSEPORT with several workers) by default: a second
        # process could then bind the port of a running edge, and Linux delivers every datagram
        # to the newest socket, stealing the first edge's dialogs. Without them the second bind
        # fails with EADDRINUSE (UDP has no TIME_WAIT: a restart may bind at once).
        flags = 0

    class EdgeUdpServer(Udp_server):  # type: ignore[misc]
        def __init__(self, global_config: Any, uopts: Any) -> None:
            super().__init__(global_config, uopts)
            _enlarge_receive_buffer(self.skt)
            if _SO_TIMESTAMPNS is not None:
                self.skt.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            self.skt.setblocking(False)
            self._closing = False
            self._backlog: deque[tuple[bytes, Any]] = deque()   # sends the kernel refused (EAGAIN)
            self._backlog_timer: Any = None
            self._reactor = reactor.current()
            self._reactor.add_reader(self.skt.fileno(), self._read_batch)

        def getSIPaddr(self) -> Any:
            (host, port), transport = super().getSIPaddr()
            if advertised_host:
                host = advertised_host
            return ((host, port), transport)

        # -- receiving ---------------------------------------------------------------------
        def _read_batch(self) -> None:
            """A reactor turn (the socket is readable): the datagrams waiting, at most a batch; the
            loop calls again at once if more are left, after its other ready callbacks."""
            # the kernel stamps arrival in wall-clock time; sippy and the guard count in monotonic
            # time: one offset per batch turns the one into the other
            mono_now = time.monotonic()
            offset = mono_now - time.time()
            self._reactor.backlogged = True   # unless the socket is read empty below
            for n in range(UDP_DRAIN_BATCH):
                if self._closing:
                    return
                try:
                    data, ancillary, _flags, address = self.skt.recvmsg(SIPPY_RECV_BYTES, _TIMESTAMP_CMSG_BYTES)
                except (BlockingIOError, InterruptedError):
                    self._reactor.backlogged = False
                    return
                except OSError as exc:
                    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                        return
                    continue  # e.g. an ICMP error reported on the socket: read on
                if not data:
                    continue
                if self.uopts.family == socket.AF_INET6:
                    address = (f"[{address[0]}]", address[1])
                arrived = _arrival(ancillary, offset, mono_now)
                if not n:   # how long the batch's first datagram waited in the socket (bench/free_to_ring.py)
                    log.debug("sip.batch_read", waited_ms=round((mono_now - arrived.monot) * 1000, 2))
                self.handle_read(data, Remote_address(address, self.transport), arrived)

        # -- sending -----------------------------------------------------------------------
        def send_to(self, data: Any, address: Any, delayed: bool = False) -> None:
            if not isinstance(data, bytes):
                data = data.encode("utf-8")
            SIP.message("out", data)
            host, port = address
            if not _is_ip_literal(host) or self.uopts.ploss_out_rate > 0.0 or self.uopts.pdelay_out_max > 0.0:
                if not self.asenders:   # sippy's sender thread, started the way sippy does, when first needed
                    self.asenders.append(AsyncSender(self))
                super().send_to(data, address, delayed)   # sippy's way: its sender thread resolves
                return
            if self.uopts.family == socket.AF_INET6:
                host = host[1:-1] if host.startswith("[") else host
            if self._backlog:
                self._backlog.append((data, (host, port)))   # keep the order behind the refused ones
                return
            self._send_now(data, (host, port))

        def _send_now(self, data: bytes, destination: Any) -> bool:
            try:
                self.skt.sendto(data, destination)
            except (BlockingIOError, InterruptedError):
                self._backlog.appendleft((data, destination))   # first in line (the backlog was empty
                # or this one was just taken from its head)
                if self._backlog_timer is None:
                    self._backlog_timer = Timeout(self._flush_backlog, SEND_RETRY_S)
                return False
            except OSError as exc:
                log.debug("sip.send_failed", error=str(exc), destination=str(destination))
            return True

        def _flush_backlog(self) -> None:
            self._backlog_timer = None
            while self._backlog and not self._closing:
                data, destination = self._backlog.popleft()
                if not self._send_now(data, destination):
                    return

        def shutdown(self) -> None:
            self._closing = True
            self._reactor.remove_reader(self.skt.fileno())
            if self._backlog_timer is not None:
                self._backlog_timer.cancel()
                self._backlog_timer = None
            super().shutdown()

    return EdgeUdpServer, EdgeUdpServerOpts


def _arrival(ancillary: list[tuple[int, int, bytes]], offset: float, mono_now: float) -> Any:
    """sippy's MonoTime of a datagram's arrival: the kernel's timestamp if there is one, else now."""
    from sippy.Time.MonoTime import MonoTime

    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            realt = seconds + nanoseconds / 1e9
            return MonoTime(monot=min(realt + offset, mono_now), realt=realt)
    return MonoTime()


def arrival_time(req: Any) -> float | None:
    """When the datagram of `req` arrived (monotonic seconds), or None if unknown."""
    rtime = getattr(req, "rtime", None)
    return None if rtime is None else float(rtime.monot)


def remember_peer(ua: Any, host: str) -> None:
    """Count `host` as a peer of `ua`'s dialog (e.g. the source of the caller's INVITE, which a NAT
    or a proxy may make differ from its Contact): its in-dialog requests are taken from there too."""
    ua.cc_peer_hosts = (*getattr(ua, "cc_peer_hosts", ()), host)


def dialog_peer_hosts(ua: Any) -> set[str]:
    """The hosts an in-dialog request of `ua`'s dialog may come from: where we send its requests
    (its first and current next hop: the peer's Contact, or the first proxy of its route set), the
    peer's Contact, and any remembered source (`remember_peer`)."""
    hosts = set(getattr(ua, "cc_peer_hosts", ()))
    for next_hop in (ua.rAddr0, ua.rAddr):
        if next_hop:
            hosts.add(str(next_hop[0][0]))
    if ua.rTarget is not None and ua.rTarget.host:
        hosts.add(str(ua.rTarget.host))
    return {host.strip("[]") for host in hosts}


def _is_ip_literal(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    try:
        socket.inet_pton(socket.AF_INET6, host[1:-1]) if host.startswith("[") else socket.inet_pton(
            socket.AF_INET, host)
    except OSError:
        return False
    return True


def _enlarge_receive_buffer(sock: socket.socket) -> None:
    # Why: bursts of INVITEs overflow the default ~200 KiB buffer while the reactor is busy.
    # SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN; fall back to SO_RCVBUF,
    # which the kernel silently caps at rmem_max.
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is not None:
            sock.setsockopt(socket.SOL_SOCKET, force, UDP_RECEIVE_BUFFER_BYTES)
        else:
            raise PermissionError
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
        except OSError as exc:
            log.warning("sip.rcvbuf_failed", error=str(exc))
            return
    log.debug("sip.rcvbuf", bytes=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))



def make_transaction_manager_class(
    *, max_message_bytes: int, advertised_host: str | None,
    on_screened: Callable[[str, str, int | None], None], guard: SourceGuard,
) -> type:
    """Sippy's SipTransactionManager that screens every datagram before parsing it, takes an
    in-dialog request from an untrusted source only from a peer of its dialog, and sends the ACK
    of an in-dialog INVITE along the dialog's route set."""
    from sippy.SipHeader import SipHeader
    from sippy.SipTransactionManager import SipTransactionManager

    class ScreenedTransactionManager(SipTransactionManager):  # type: ignore[misc]
        model_udp_server = make_udp_server_class(advertised_host)
        held_trying = HeldTrying()

        def handleIncoming(self, data_in: Any, ra: Any, server: Any, rtime: Any) -> None:
            if isinstance(data_in, str):
                data_in = data_in.encode("utf-8", errors="replace")
            verdict = screen_datagram(data_in, max_message_bytes)
            if verdict.drop_reason is None:
                SIP.message("in", data_in)
                super().handleIncoming(data_in, ra, server, rtime)
                return
            source = f"{ra.address[0]}:{ra.address[1]}"
            if verdict.drop_reason:
                on_screened(verdict.drop_reason, source, None if verdict.reply is None else 400)
            if verdict.reply is not None:
                server.send_to(verdict.reply, ra.address)

        # Why: sippy hands a request that matches a dialog (Call-ID and tags) or a transaction
        # (CANCEL) to it whatever its source, so a BYE with the right tags from anywhere hung up a
        # call. A source outside the trusted networks must be a peer of the dialog it addresses
        # (`dialog_peer_hosts`), or the source of the INVITE it cancels; others get 403 (an ACK is
        # dropped). Requests that match nothing go on to the router (whose INVITE check is the
        # guard's). From trusted sources nothing is looked up: the default costs one test.
        def incomingRequest(self, msg: Any, checksum: Any, tids: Any, server: Any) -> None:
            source = str(msg.getSource()[0]).strip("[]")
            if guard.trusted(source) or self._from_a_peer(msg, source):
                super().incomingRequest(msg, checksum, tids, server)
                return
            on_screened("not_a_dialog_peer", source, None if msg.getMethod() == "ACK" else 403)
            if msg.getMethod() != "ACK":
                resp = msg.genResponse(403, "Forbidden")
                self.transmitMsg(server, resp, resp.getHFBody("via").getTAddr(), checksum)

        def _from_a_peer(self, msg: Any, source: str) -> bool:
            """False if `msg` addresses a dialog or a transaction that `source` is not part of."""
            if msg.getMethod() == "CANCEL":
                t = self.tserver.get(msg.getTId(wBRN=True))
                return t is None or t.address is None or str(t.address[0]).strip("[]") == source
            if msg.getHFBody("to").getTag() is None:
                return True   # a new request: the router decides
            for consumer in self.req_consumers.get(str(msg.getHFBody("call-id")), ()):
                ua = consumer.cobj.isYours(msg)
                if ua is not None:
                    return source in dialog_peer_hosts(ua)
            return True   # no such dialog: 481 as usual

        # Why: sippy builds the ACK of a 2xx from the response's Contact and Record-Route, which is
        # right for a dialog-creating INVITE only. The 200 to a re-INVITE normally has no
        # Record-Route (the route set is fixed when the dialog is created, RFC 3261 12.2), so the
        # ACK of every re-INVITE the edge sent behind a record-routing proxy went straight to the
        # peer's Contact, without Route: past the proxy (or nowhere, behind NAT), and the peer,
        # never ACKed, hung up after 32 s. Keep the re-INVITE's own Route headers and next hop for
        # its ACK (loose routing; strict routing is left as sippy does it).
        def newTransaction(self, msg: Any, *args: Any, **kwargs: Any) -> Any:
            t = super().newTransaction(msg, *args, **kwargs)
            if t.method == "INVITE" and msg.getHFBody("to").getTag() is not None:
                routes = msg.getHFBCopys("route")
                if routes and routes[0].getUrl().lr:
                    t.dialog_route_set = (routes, t.address)
            return t

        # the 100 Trying of an INVITE waits for the end of the turn, and is not sent if another
        # response was (`trying.py`: the edge answers every new INVITE with 180 in the same turn)
        def sendResponse(self, resp: Any, t: Any = None, retrans: bool = False, *args: Any, **kwargs: Any) -> None:
            tr = self.tserver.get(resp.getTId(wBRN=True)) if t is None else t
            if is_held_trying(resp, tr, retrans):
                self.held_trying.hold(resp, tr, kwargs.get("lossemul", 0), super().sendResponse)
                return
            if tr is not None:
                self.held_trying.forget(tr)
            super().sendResponse(resp, t if tr is None else tr, retrans, *args, **kwargs)

        # counted here: sippy resends a request on its timer A, and answers a retransmitted request
        # from its response cache (the one transmitData call that passes `lossemul`)
        def timerA(self, t: Any) -> None:
            SIP.retransmission("out")
            super().timerA(t)

        def transmitData(self, userv: Any, data: Any, address: Any, *args: Any, **kwargs: Any) -> None:
            if "lossemul" in kwargs:
                SIP.retransmission("in")
            super().transmitData(userv, data, address, *args, **kwargs)

        def transmitReq(self, t: Any, msg: Any, address: Any, *args: Any, **kwargs: Any) -> None:
            route_set = getattr(t, "dialog_route_set", None)
            if route_set is not None and msg is t.ack:
                routes, address = route_set
                msg.delHFs("route")
                msg.appendHeaders([SipHeader(name="route", body=route.getCopy()) for route in routes])
            super().transmitReq(t, msg, address, *args, **kwargs)

    return ScreenedTransactionManager
