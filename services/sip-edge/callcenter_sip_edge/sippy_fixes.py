"""Start-up workarounds for the sippy 2.5.0 defects found in the SIP stack evaluation.

Reads: the sippy package (imported lazily, on the SIP thread, so that sippy's reactor binds to it).
Writes: patches a few sippy classes in place, once per process (monkeypatches that wrap or extend
sippy's own methods; no sippy code is copied here), tunes the garbage collector, and provides
the UDP server and transaction manager subclasses the edge uses (socket read and written by the
reactor thread, large receive buffer, advertised address, screening of malformed datagrams),
the one dialog operation sippy lacks (`reinvite_without_offer`), and the two header values the
edge sets on its UAs: the Contact (`contact_without_display_name`) and the calling display name
(`quotable_display_name`).

Every patch says which defect it works around. `apply_sippy_fixes()` is idempotent.
"""

from __future__ import annotations

import errno
import functools
import gc
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# sippy's receiver thread reads with recvfrom(8192): anything this long was truncated by the kernel.
SIPPY_RECV_BYTES = 8192
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# datagrams the reactor reads per wake-up before it lets its timers run
UDP_DRAIN_BATCH = 64
# a datagram the kernel refused (send buffer full) is tried again after this long
SEND_RETRY_S = 0.01

_applied = False


def apply_sippy_fixes() -> None:
    """Patch sippy 2.5.0 in place. Call on the SIP thread before any sippy object is created."""
    global _applied
    if _applied:
        return
    _use_one_udp_worker()
    _answer_in_dialog_update()
    _answer_unknown_in_dialog_methods()
    _keep_update_transaction_open_while_relayed()
    _ack_before_bye_when_a_200_crosses_the_cancel()
    _case_insensitive_transport_param()
    _keep_session_sdp_after_failed_reinvite()
    _fast_clocks()
    _no_resolver_for_numeric_addresses()
    _no_reference_cycle_per_request()
    _placeholder_test_without_dir()
    _applied = True
    log.debug("sippy_fixes.applied")


def tune_gc() -> None:
    """Move everything built at start-up out of the collector's reach and stop automatic collections;
    `CycleCollector` collects when the edge is idle and at least every `GC_MAX_INTERVAL_S`.

    Why: sippy makes many small objects per message and keeps a call's dialogs ~32 s after it ends,
    so the live heap is large (~1.2 million tracked objects at 150 calls/s) and every collection
    walks a big share of it. With the thresholds used before (50,000, 20, 100) young collections
    took 20-240 ms and the middle generation up to 650 ms, about 14 % of the edge's CPU and the
    pauses behind the retransmissions seen at 150 calls/s. Reference counting frees almost
    everything: once `_no_reference_cycle_per_request` removed the one cycle sippy made per
    request, a full collection after 90 s at 150 calls/s found ~100 cyclic objects (start-up
    leftovers), so automatic collections only cost time. sippy's UAs break their own cycles when
    they die (UaStateDead).
    """
    gc.collect()
    gc.freeze()
    gc.disable()


# a collection when no call has been up for this long (the dialogs of the last call are gone)
GC_IDLE_AFTER_S = 40.0
# ... and at the latest this long after the previous one, whatever the load (a safety net for
# reference cycles in paths the benchmark does not take; its pause grows with the live heap)
GC_MAX_INTERVAL_S = 900.0


class CycleCollector:
    """Decides when the SIP thread runs the cycle collector (automatic collection is off, see
    `tune_gc`): `tick(active_calls)` every few seconds collects once the edge has been idle for
    `idle_after_s` (once per idle period), or when `max_interval_s` has passed since the last
    collection. Logs what each collection found; a growing count means a new reference cycle."""

    def __init__(self, *, idle_after_s: float = GC_IDLE_AFTER_S, max_interval_s: float = GC_MAX_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, collect: Callable[[], int] = gc.collect) -> None:
        self.idle_after_s = idle_after_s
        self.max_interval_s = max_interval_s
        self._clock = clock
        self._collect = collect
        now = clock()
        self._last_collection = now
        self._last_busy = now
        self._collected_since_busy = True   # nothing to collect before the first call

    def tick(self, active_calls: int) -> int | None:
        """The number of unreachable objects found, or None if no collection ran."""
        now = self._clock()
        if active_calls:
            self._last_busy = now
            self._collected_since_busy = False
        idle = not active_calls and not self._collected_since_busy and now - self._last_busy >= self.idle_after_s
        if not idle and now - self._last_collection < self.max_interval_s:
            return None
        started = time.perf_counter()
        found = self._collect()
        self._last_collection = self._clock()
        self._collected_since_busy = self._collected_since_busy or not active_calls
        log.info("sip.gc_collected", unreachable=found, ms=round((time.perf_counter() - started) * 1000, 1),
                 idle=idle, active_calls=active_calls)
        return found


def _use_one_udp_worker() -> None:
    # Why: with sippy's default of 3 receiver threads per socket, two datagrams of the same
    # dialog can be handed to the reactor out of order (a 180 reached the caller after the 200).
    # One receiver keeps the arrival order; the reactor is single-threaded anyway.
    from sippy.Udp_server import Udp_server_opts

    Udp_server_opts.nworkers = 1


def _answer_in_dialog_update() -> None:
    # Why: UaStateConnected has no UPDATE handler (RFC 3311), so an in-dialog UPDATE got no
    # answer at all and its retransmission a 500. An UPDATE with an offer is handled like a
    # re-INVITE (the B2BUA relays the offer to the peer as a re-INVITE and answers the UPDATE
    # with the peer's answer); an UPDATE without a body (session refresh) gets 200 at once.
    from sippy.CCEvents import CCEventUpdate
    from sippy.UaStateConnected import UaStateConnected

    def recv_update(state: Any, req: Any) -> Any:
        ua = state.ua
        body = req.getBody()
        if body is None:
            req.sendResponse(200, "OK")
            return None
        # sendUasResponse() answers whatever transaction uasResp was generated from.
        ua.uasResp = req.genResponse(100, "Trying", server=ua.local_ua)
        if ua.rSDP is not None and str(ua.rSDP) == str(body):
            ua.sendUasResponse(200, "OK", ua.lSDP, (ua.lContact,))
            return None
        event = CCEventUpdate(body, rtime=req.rtime, origin=ua.origin)
        ua.rSDP = body.getCopy()
        ua.equeue.append(event)
        return (ua.UasStateUpdating,)

    UaStateConnected.recv_request_handlers["UPDATE"] = recv_update


def _answer_unknown_in_dialog_methods() -> None:
    # Why: a request that the dialog state has no handler for (PRACK, MESSAGE, NOTIFY, UPDATE
    # during a pending offer, ...) was silently dropped, so the peer retransmitted it for 32 s
    # and then its retransmissions got a 500. Answer it: 491 for UPDATE while an offer is
    # pending (RFC 3311 5.2), 481 for a BYE outside a confirmed dialog, 501 otherwise.
    from sippy.UacStateUpdating import UacStateUpdating
    from sippy.UasStateUpdating import UasStateUpdating
    from sippy.UaStateGeneric import UaStateGeneric

    original_recv_request = UaStateGeneric.recvRequest
    silent_methods = frozenset({"ACK", "CANCEL"})

    def recv_request_or_answer(state: Any, req: Any) -> Any:
        method = req.getMethod()
        if method in state.recv_request_handlers or method in silent_methods:
            return original_recv_request(state, req)
        if not hasattr(req, "sendResponse"):
            # not reached through UA.recvRequest: keep sippy's behaviour
            return original_recv_request(state, req)
        if method == "UPDATE" and isinstance(state, UacStateUpdating | UasStateUpdating):
            req.sendResponse(491, "Request Pending")
        elif method == "BYE":
            req.sendResponse(481, "Call Leg/Transaction Does Not Exist")
        else:
            req.sendResponse(501, "Not Implemented")
        return None

    UaStateGeneric.recvRequest = recv_request_or_answer


def _keep_update_transaction_open_while_relayed() -> None:
    # Why: sippy deletes a non-INVITE server transaction as soon as the UA returns without a
    # response, so the 200 for a relayed UPDATE (sent when the peer answers the re-INVITE) would
    # find no transaction. Returning an empty result keeps the transaction until it is answered.
    from sippy.UA import UA
    from sippy.UasStateUpdating import UasStateUpdating

    original_recv_request = UA.recvRequest

    def recv_request(ua: Any, req: Any, sip_t: Any) -> Any:
        result = original_recv_request(ua, req, sip_t)
        if result is None and req.getMethod() == "UPDATE" and isinstance(ua.state, UasStateUpdating):
            return (None, None, None)
        return result

    UA.recvRequest = recv_request


def _no_reference_cycle_per_request() -> None:
    # Why: UA.recvRequest stores a closure on every request it gets (req.sendResponse) that refers
    # to the request itself, so each request a dialog received (with its ~40 parsed header objects)
    # was a reference cycle only the garbage collector could free: at 100 calls/s all of the ~16,000
    # objects each young collection freed were these. Every user of the closure is a dialog-state
    # handler that runs inside recvRequest, so drop it when recvRequest returns: the request is
    # then freed by reference counting as soon as nothing else holds it.
    from sippy.UA import UA

    original_recv_request = UA.recvRequest

    def recv_request(ua: Any, req: Any, sip_t: Any) -> Any:
        try:
            return original_recv_request(ua, req, sip_t)
        finally:
            req.__dict__.pop("sendResponse", None)

    UA.recvRequest = recv_request


def _ack_before_bye_when_a_200_crosses_the_cancel() -> None:
    # Why: a phone may answer an INVITE we have just CANCELled (a ring-all leg that lost, a ring
    # cancelled at the ring timeout): its 200 crosses our CANCEL. UacStateCancelling sends the BYE
    # from inside the response callback, and the transaction manager sends the ACK for that 200
    # only after the callback returns, so the phone got BYE before ACK, a BYE for a session whose
    # 200 it still retransmits (SIPp aborts the call: "unexpected BYE"). Hold the BYE back until
    # the reactor's next turn, after the ACK has been handed to the sender.
    from sippy.Time.Timeout import Timeout
    from sippy.UacStateCancelling import UacStateCancelling

    original_recv_response = UacStateCancelling.recvResponse

    def recv_response(state: Any, resp: Any, tr: Any) -> Any:
        if not 200 <= resp.getSCode()[0] < 300:
            return original_recv_response(state, resp, tr)
        ua = state.ua
        held: list[tuple[Any, dict[str, Any]]] = []
        # shadow the method on this one UA for this one call: the BYE is built but not sent yet
        ua.newTransaction = lambda req, **kwargs: held.append((req, kwargs))
        try:
            return original_recv_response(state, resp, tr)
        finally:
            del ua.newTransaction
            for req, kwargs in held:
                Timeout(functools.partial(ua.newTransaction, req, **kwargs), 0)

    UacStateCancelling.recvResponse = recv_response


def _case_insensitive_transport_param() -> None:
    # Why: URI parameters are case-insensitive (RFC 3261 19.1.4), but sippy compares the
    # transport with 'udp' literally: a Contact with ;transport=UDP made newTransaction() raise
    # "unsupported transport: UDP", and the BYE to that party was never sent.
    from sippy.SipURL import SipURL

    original_get_taddr = SipURL.getTAddr

    def get_taddr(url: Any) -> Any:
        address, transport = original_get_taddr(url)
        if isinstance(transport, str):
            transport = transport.lower()
        return (address, transport)

    SipURL.getTAddr = get_taddr


def _keep_session_sdp_after_failed_reinvite() -> None:
    # Why: when a re-INVITE we send gets a non-2xx answer (491 glare, 488), UacStateUpdating
    # sets ua.lSDP = None although the session keeps its previous SDP (RFC 3261 14.1); the next
    # re-INVITE on that leg then crashes in UaStateConnected._recvEventUpdate (None.localStr).
    # Remember the SDP in force when a re-INVITE starts and put it back if it fails.
    from sippy.CCEvents import CCEventUpdate
    from sippy.UacStateUpdating import UacStateUpdating
    from sippy.UaStateConnected import UaStateConnected

    original_send_update = UaStateConnected.recv_event_handlers[CCEventUpdate]
    original_recv_response = UacStateUpdating.recvResponse

    def send_update(state: Any, event: Any, extra_headers: Any) -> Any:
        state.ua.session_sdp_before_update = state.ua.lSDP
        return original_send_update(state, event, extra_headers)

    def recv_response(state: Any, resp: Any, tr: Any) -> Any:
        ua = state.ua
        result = original_recv_response(state, resp, tr)
        if ua.lSDP is None and resp.getSCode()[0] >= 300:
            ua.lSDP = getattr(ua, "session_sdp_before_update", None)
        return result

    UaStateConnected.recv_event_handlers[CCEventUpdate] = send_update
    UacStateUpdating.recvResponse = recv_response


def _fast_clocks() -> None:
    # Why: sippy reads its clocks through ctypes (clock_dtime.py), and on Linux its CLOCK_MONOTONIC
    # is 4 = CLOCK_MONOTONIC_RAW, which the vDSO does not serve: a real system call for every
    # MonoTime (each message, timer and transaction). Profiled at 150 calls/s it was 21% of the
    # edge's samples. The C implementation in `time`, on the vDSO's CLOCK_MONOTONIC, does the same
    # job; every sippy clock read goes through these functions, so all its times stay comparable.
    import time as _time

    from sippy.Time import MonoTime, clock_dtime

    clocks = {clock_dtime.CLOCK_REALTIME: _time.CLOCK_REALTIME, clock_dtime.CLOCK_MONOTONIC: _time.CLOCK_MONOTONIC}

    def getdtime(kind: int) -> float:
        return _time.clock_gettime(clocks.get(kind, kind))

    def getntime(kind: int) -> int:
        return _time.clock_gettime_ns(clocks.get(kind, kind))

    def getitime(kind: int) -> tuple[int, int]:
        return divmod(getntime(kind), 1_000_000_000)

    clock_dtime.clock_getdtime, clock_dtime.clock_getntime, clock_dtime.clock_getitime = getdtime, getntime, getitime
    MonoTime.clock_getdtime = getdtime
    try:
        from sippy.Security import SipNonce
    except ImportError:  # pragma: no cover - optional in sippy
        return
    SipNonce.clock_getntime = getntime


_HAS_MY = ("my",)
_NO_MY = ()


def _my_marker_names(obj: Any) -> tuple[str, ...]:
    """`dir(obj)` as far as sippy's `'my' in dir(obj)` needs it: ("my",) for sippy's MyAddress /
    MyPort / MyTransport placeholders (the local address, filled in when a message is sent)."""
    return _HAS_MY if hasattr(obj, "my") else _NO_MY


def _placeholder_test_without_dir() -> None:
    # Why: sippy tells its local-address placeholders from real values with `'my' in dir(value)`
    # (SipURL, SipVia, SdpOrigin localStr, SipConf.port_needed), and dir() of a str builds and sorts
    # a list of ~80 names: 8 us each, three or more per URL, a dozen URLs per message sent. At 120
    # calls/s that was a quarter of the SIP thread's time (profiled with py-spy --gil). Every use of
    # dir() in these modules is that test, so their global `dir` becomes an equivalent that asks
    # hasattr() (44 ns).
    import importlib

    for name in ("sippy.SipConf", "sippy.SipURL", "sippy.SipVia", "sippy.SdpOrigin"):
        setattr(importlib.import_module(name), "dir", _my_marker_names)  # noqa: B010 - a module global


class _NumericResolverSocketModule:
    """The `socket` module as sippy's sender thread sees it: getaddrinfo() of an IPv4 literal is
    answered without calling the resolver."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def getaddrinfo(host: Any, port: Any, family: int = 0, *args: Any, **kwargs: Any) -> Any:
        if family in (0, socket.AF_INET) and isinstance(host, str):
            try:
                socket.inet_aton(host)
            except OSError:
                pass
            else:
                if host.count(".") == 3:
                    return [(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", (host, port or 0))]
        return socket.getaddrinfo(host, port, family, *args, **kwargs)


def _no_resolver_for_numeric_addresses() -> None:
    # Why: sippy's sender thread calls socket.getaddrinfo() for every datagram it sends, even to
    # an IP address literal (3% of the edge's samples at 150 calls/s). Hostnames still resolve.
    from sippy import Udp_server

    Udp_server.socket = _NumericResolverSocketModule()


def make_udp_server_class(advertised_host: str | None) -> tuple[type, type]:
    """sippy's Udp_server, driven from the reactor thread, with a 4 MiB receive buffer and,
    optionally, an advertised address. Returns (server class, its options class), the pair
    `SipTransactionManager.model_udp_server` takes.

    Why not sippy's own threads: its Udp_server hands every datagram received to the reactor with
    ED2.callFromThread (a receiver thread) and every datagram sent to a sender thread through a
    Queue. At 150 calls/s (~3,000 datagrams/s) those two hand-offs per datagram, and the fight for
    the GIL they start each time, were about a fifth of the edge's samples. Here no sippy worker
    thread reads the socket: a watcher thread only waits (GIL released) until it is readable and
    asks the reactor once to drain it; the reactor reads every queued datagram itself
    (non-blocking) and sends directly. A datagram to a host name still goes through sippy's sender
    thread, which resolves it off the reactor.

    The advertised host replaces the bound address wherever sippy renders its own address
    (Via, Contact, From of new legs), for an edge behind NAT or bound to 0.0.0.0.
    """
    from sippy.Core.EventDispatcher import ED2
    from sippy.Network_server import Remote_address
    from sippy.Time.MonoTime import MonoTime
    from sippy.Time.Timeout import Timeout
    from sippy.Udp_server import AsyncSender, Udp_server, Udp_server_opts

    class EdgeUdpServerOpts(Udp_server_opts):  # type: ignore[misc]
        nworkers = 0   # sippy starts no receiver and no sender thread of its own

    class EdgeUdpServer(Udp_server):  # type: ignore[misc]
        def __init__(self, global_config: Any, uopts: Any) -> None:
            super().__init__(global_config, uopts)
            _enlarge_receive_buffer(self.skt)
            self.skt.setblocking(False)
            self._closing = False
            self._drained = threading.Event()
            self._backlog: deque[tuple[bytes, Any]] = deque()   # sends the kernel refused (EAGAIN)
            self._backlog_timer: Any = None
            # for host names only (see send_to); sippy's class, started the way sippy does
            self.asenders.append(AsyncSender(self))
            self._watcher = threading.Thread(target=self._watch, name="sip-udp-watch", daemon=True)
            self._watcher.start()

        def getSIPaddr(self) -> Any:
            (host, port), transport = super().getSIPaddr()
            if advertised_host:
                host = advertised_host
            return ((host, port), transport)

        # -- receiving ---------------------------------------------------------------------
        def _watch(self) -> None:
            """Watcher thread: wake the reactor once per batch of datagrams, never touch them."""
            poller = select.poll()
            poller.register(self.skt.fileno(), select.POLLIN)
            while not self._closing:
                if not poller.poll(1000) or self._closing:
                    continue
                self._drained.clear()
                try:
                    ED2.callFromThread(self._drain)
                except RuntimeError:  # the reactor is gone (interpreter shutdown)
                    return
                while not self._drained.wait(1.0):
                    if self._closing:
                        return

        def _drain(self) -> None:
            """Reactor thread: handle the datagrams waiting in the socket, a bounded batch per turn
            (the watcher asks again at once if more are left), then the timers that are due."""
            try:
                self._read_batch()
            finally:
                run_due_timers()
                self._drained.set()

        def _read_batch(self) -> None:
            for _ in range(UDP_DRAIN_BATCH):
                if self._closing:
                    return
                try:
                    data, address = self.skt.recvfrom(SIPPY_RECV_BYTES)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                        return
                    continue  # e.g. an ICMP error reported on the socket: read on
                if not data:
                    continue
                if self.uopts.family == socket.AF_INET6:
                    address = (f"[{address[0]}]", address[1])
                self.handle_read(data, Remote_address(address, self.transport), MonoTime())

        # -- sending -----------------------------------------------------------------------
        def send_to(self, data: Any, address: Any, delayed: bool = False) -> None:
            host, port = address
            if not _is_ip_literal(host) or self.uopts.ploss_out_rate > 0.0 or self.uopts.pdelay_out_max > 0.0:
                super().send_to(data, address, delayed)   # sippy's way: its sender thread resolves
                return
            if not isinstance(data, bytes):
                data = data.encode("utf-8")
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
            if self._backlog_timer is not None:
                self._backlog_timer.cancel()
                self._backlog_timer = None
            super().shutdown()

    return EdgeUdpServer, EdgeUdpServerOpts


def run_due_timers() -> None:
    """Reactor thread, inside a call-from-thread callback: run the sippy timers that are due.

    Why: ED2.loop() runs its timers only when ElPeriodic's procrastinate() returns, and that does
    not return while call-from-thread callbacks keep arriving: with 5 ms callbacks back to back a
    10 ms timer went up to 1 s without firing, then fired in a burst. Under load the socket's
    drain callbacks arrive back to back, so retransmission timers, ring timeouts and the
    controller's deferred steps would wait for a lull. Running the due timers after each batch
    (as loop() itself does between two waits) keeps them on time.
    """
    from sippy.Core.EventDispatcher import ED2
    from sippy.Time.MonoTime import MonoTime

    ED2.last_ts = MonoTime()
    ED2.dispatchTimers()


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


def reinvite_without_offer(ua: Any) -> bool:
    """Send a re-INVITE without SDP on a confirmed dialog (RFC 3725 flow I).

    The peer's 2xx then carries an offer, which the UA's event callback gets as
    CCEventConnect((code, reason, offer)); the ACK is held until the edge has the answer and
    passes it with `ua.recvEvent(CCEventConnect((200, "OK", answer)))`, the same way as for an
    initial INVITE without SDP (`ua.pending_tr`). A non-2xx answer (491, 488, ...) comes as
    CCEventFail and the dialog keeps its session. Returns False, sending nothing, if the dialog
    is not idle (an offer/answer exchange or an ACK is outstanding).

    Why: sippy sends a re-INVITE only with an offer (UaStateConnected._recvEventUpdate reads
    the body) and ACKs every 2xx to a re-INVITE at once, without a body.
    """
    from sippy.UacStateUpdating import UacStateUpdating
    from sippy.UaStateConnected import UaStateConnected

    if not isinstance(ua.state, UaStateConnected) or ua.pending_tr is not None:
        return False
    req = ua.genRequest("INVITE")
    # what _keep_session_sdp_after_failed_reinvite restores when the re-INVITE fails
    ua.session_sdp_before_update = ua.lSDP

    def on_response(resp: Any, tr: Any) -> None:
        code = resp.getSCode()[0]
        if 200 <= code < 300 and resp.getBody() is not None and ua.pending_tr is None:
            # set before the transaction manager builds the ACK: it holds it (state UACK)
            tr.uack = True
            ua.pending_tr = tr
        ua.recvResponse(resp, tr)

    ua.tr = ua.newTransaction(req, resp_cb=on_response, cb_ifver=2)
    ua.changeState((UacStateUpdating,))
    return True


def contact_without_display_name() -> Any:
    """The Contact a new UA sends (set it as `ua.lContact` right after `UA(...)`): the edge's own
    address in angle brackets, with no display name. The address stays sippy's placeholders, so
    it is rendered as today when a message is sent (the advertised host, see
    `make_udp_server_class`); a UAC's INVITE still puts the calling user in front of it.

    Why: sippy's default Contact is `Anonymous <sip:host:port>` (SipContact()). That is valid
    RFC 3261, but peers that take the Contact as it stands as the target of their next request
    (SIPp's `[next_url]`, some phones) sent `ACK Anonymous <sip:...> SIP/2.0`, a start line the
    edge drops as malformed: with such a peer no call completed.
    """
    from sippy.SipAddress import SipAddress
    from sippy.SipConf import SipConf
    from sippy.SipContact import SipContact
    from sippy.SipURL import SipURL

    url = SipURL(host=SipConf.my_address, port=SipConf.my_port, transport=SipConf.my_transport)
    return SipContact(address=SipAddress(url=url, hadbrace=True))


def quotable_display_name(name: str | None) -> str | None:
    """`name` in the form sippy needs for a display name: the text between the quotes of an RFC 3261
    quoted-string. A `"` or `\\` that does not already start a quoted-pair gets a backslash, CR and
    LF are dropped. A name taken from a caller's From is already in that form (sippy keeps it as
    it was on the wire) and comes back unchanged. Apply to the calling name of a new UAC leg.

    Why: sippy writes a display name as `"%s"` without escaping it, so a name with a quote in it
    (a flow's caller-id prefix such as `Sales "VIP"`) reached the agent as
    `From: "Sales "VIP" Ann" <sip:...>`, which a parser cannot read as one name.
    """
    if name is None:
        return None
    out: list[str] = []
    chars = iter(name.replace("\r", "").replace("\n", ""))
    for char in chars:
        if char == "\\":
            escaped = next(chars, "\\")   # a quoted-pair stays as it is; a trailing one is doubled
            out.append("\\" + escaped)
        elif char == '"':
            out.append('\\"')
        else:
            out.append(char)
    return "".join(out)


# ---------------------------------------------------------------- malformed datagram screening

_COMPACT_HEADER_NAMES = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
                         "l": "content-length", "c": "content-type"}
_MANDATORY_HEADERS = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}
_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0$")
_CSEQ_VALUE = re.compile(r"^\d{1,10}\s+[A-Za-z]+$")


class Screening:
    """What to do with one datagram before sippy parses it: pass it on, drop it, or answer it."""

    __slots__ = ("drop_reason", "reply")

    def __init__(self, drop_reason: str | None = None, reply: bytes | None = None) -> None:
        self.drop_reason = drop_reason   # None: hand to sippy; "": drop silently; else: why
        self.reply = reply               # a 400 to send back instead of handing it to sippy


PASS = Screening()


def screen_datagram(data: bytes, max_message_bytes: int) -> Screening:
    """Check what sippy does not: size, encoding, start line and mandatory headers.

    Why: sippy raises (and prints a traceback) on non-UTF-8 input, never answers a request that
    lacks Call-ID, and gets datagrams over 8 KiB truncated. A request we can still answer gets
    a 400 built from its own headers; anything else is dropped with a log line.
    """
    if len(data) > max_message_bytes or len(data) >= SIPPY_RECV_BYTES:
        return Screening(drop_reason="oversized")
    if len(data) < 32:
        # keep-alives (CRLF) and fragments: sippy ignores them too
        return Screening(drop_reason="" if not data.strip() else "too_short")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return Screening(drop_reason="not_utf8")
    head = re.split(r"\r\n\r\n|\n\n", text, maxsplit=1)[0]
    lines = head.splitlines()
    start_line = lines[0].strip() if lines else ""
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line or line[0] in " \t":
            continue  # folded continuation, irrelevant for presence checks
        name, sep, _value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = _COMPACT_HEADER_NAMES.get(key, key)
        headers.setdefault(key, []).append(line)
    is_response = start_line.startswith("SIP/2.0 ")
    request_line = None if is_response else _REQUEST_LINE.match(start_line)
    if not is_response and request_line is None:
        return Screening(drop_reason="bad_start_line")
    missing = [name for name in _MANDATORY_HEADERS if name not in headers]
    cseq_ok = "cseq" in headers and _CSEQ_VALUE.match(headers["cseq"][0].partition(":")[2].strip())
    if not missing and cseq_ok:
        return PASS
    if is_response or request_line is None or request_line.group(1).upper() == "ACK":
        return Screening(drop_reason="missing_headers")
    if "via" not in headers:
        return Screening(drop_reason="missing_via")
    problem = f"Missing {', '.join(_MANDATORY_HEADERS[name] for name in missing)}" if missing else "Bad CSeq"
    reply_lines = [f"SIP/2.0 400 Bad Request - {problem}", *headers["via"]]
    for name in ("from", "to", "call-id", "cseq"):
        reply_lines.extend(headers.get(name, ()))
    reply_lines += ["Content-Length: 0", "", ""]
    return Screening(drop_reason=problem, reply="\r\n".join(reply_lines).encode())


def make_transaction_manager_class(
    *, max_message_bytes: int, advertised_host: str | None,
    on_screened: Callable[[str, str, bool], None],
) -> type:
    """sippy's SipTransactionManager that screens every datagram before parsing it, and sends the
    ACK of an in-dialog INVITE along the dialog's route set."""
    from sippy.SipHeader import SipHeader
    from sippy.SipTransactionManager import SipTransactionManager

    class ScreenedTransactionManager(SipTransactionManager):  # type: ignore[misc]
        model_udp_server = make_udp_server_class(advertised_host)

        def handleIncoming(self, data_in: Any, ra: Any, server: Any, rtime: Any) -> None:
            if isinstance(data_in, str):
                data_in = data_in.encode("utf-8", errors="replace")
            verdict = screen_datagram(data_in, max_message_bytes)
            if verdict.drop_reason is None:
                super().handleIncoming(data_in, ra, server, rtime)
                return
            source = f"{ra.address[0]}:{ra.address[1]}"
            if verdict.drop_reason:
                on_screened(verdict.drop_reason, source, verdict.reply is not None)
            if verdict.reply is not None:
                server.send_to(verdict.reply, ra.address)

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

        def transmitReq(self, t: Any, msg: Any, address: Any, *args: Any, **kwargs: Any) -> None:
            route_set = getattr(t, "dialog_route_set", None)
            if route_set is not None and msg is t.ack:
                routes, address = route_set
                msg.delHFs("route")
                msg.appendHeaders([SipHeader(name="route", body=route.getCopy()) for route in routes])
            super().transmitReq(t, msg, address, *args, **kwargs)

    return ScreenedTransactionManager
