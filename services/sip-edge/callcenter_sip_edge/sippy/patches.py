"""Monkeypatches for the sippy 2.5.0 defects found in the SIP stack evaluation, and nothing else.

Reads: the sippy package (imported lazily, when a stack starts).
Writes: patches a few sippy classes and module globals in place, once per process (each wraps or
extends sippy's own code; no sippy code is copied here).

Every patch says which defect it works around. `apply_patches()` is idempotent. The edge's own UDP
server and transaction manager are in `transport.py`, the dialog operations sippy lacks in
`dialog.py`.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

import structlog

from callcenter_sip_edge.sippy.memory import apply_memory_patches

log = structlog.get_logger(__name__)

_applied = False


def apply_patches() -> None:
    """Patch sippy 2.5.0 in place. Call before any sippy object is created."""
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
    _random_tokens_from_a_pool()
    _timers_ordered_by_their_float()
    _no_resolver_for_numeric_addresses()
    _no_reference_cycle_per_request()
    _placeholder_test_without_dir()
    _rfc_header_spelling()
    _host_address_looked_up_once_a_second()
    _cheaper_messages()
    apply_memory_patches()
    _applied = True
    log.debug("sippy.patches_applied")


def _cheaper_messages() -> None:
    # Why: parsing, reading, copying and rendering SIP messages in sippy's Python, the CANCEL and 408
    # every client transaction built in case it would need them, cancelled timers kept (issue 15).
    from callcenter_sip_edge.sippy import lazy_transactions, message_costs, timer_heap

    message_costs.apply()
    lazy_transactions.apply()
    timer_heap.apply()


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
        if url.scheme == "sips" and url.transport is None:
            transport = "tls"   # a sips: URI without transport= is reached over TLS (RFC 3261 26.2)
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


class RandomPool:
    """`secrets.token_hex` and `secrets.randbelow` from kernel randomness read 4 KiB at a time: the
    same bytes (os.urandom), one system call per 256 tokens of 16 bytes instead of one per token.
    Each byte is handed out once. Called from the SIP stack's one thread (sippy runs on the edge's
    event loop)."""

    SIZE = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0

    def token_hex(self, nbytes: int | None = None) -> str:
        return self._take(32 if nbytes is None else nbytes).hex()

    def randbelow(self, n: int) -> int:
        """As `secrets.randbelow`: uniform in [0, n), by rejection (the bits of n, drawn again when
        the value is n or more), so no value is likelier than another."""
        if n <= 0:
            raise ValueError("Upper bound must be positive.")
        bits = n.bit_length()
        nbytes = (bits + 7) // 8
        while True:
            value = int.from_bytes(self._take(nbytes), "big") >> (8 * nbytes - bits)
            if value < n:
                return value

    def _take(self, n: int) -> bytes:
        if self._at + n > len(self._buf):
            self._buf, self._at = os.urandom(max(self.SIZE, n)), 0
        start = self._at
        self._at = start + n
        return self._buf[start:start + n]


RANDOM_POOL = RandomPool()
# the sippy modules that make Via branches, Call-IDs, From/To tags and multipart boundaries
_TOKEN_MODULES = ("sippy.SipVia", "sippy.SipCallId", "sippy.SipFrom", "sippy.UA", "sippy.MultipartMixBody")


def _random_tokens_from_a_pool() -> None:
    # Why: sippy takes every Via branch, Call-ID and tag from secrets.token_hex, one getrandom()
    # system call each (5 or more per call); profiled at 200 calls/s they were 2.2 % of the edge's
    # samples. The same kernel randomness, read in 4 KiB blocks (issue 15). The first CSeq of each
    # dialog the edge starts likewise (0.45 % at 200 calls/s).
    import importlib

    for name in _TOKEN_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "token_hex"):
            setattr(module, "token_hex", RANDOM_POOL.token_hex)  # noqa: B010 - a module global
    # and each new dialog's first CSeq (secrets.randbelow: a getrandom() call per INVITE sent)
    setattr(importlib.import_module("sippy.SipCSeq"), "randbelow", RANDOM_POOL.randbelow)  # noqa: B010 - a module global


def _timers_ordered_by_their_float() -> None:
    # Why: sippy keeps its timers in a heap ordered by EventListener.__lt__, which calls
    # MonoTime.__lt__: two Python calls per comparison, and a dozen comparisons per timer started
    # or fired with thousands of timers in the heap (several per transaction). Profiled at 100
    # calls/s (py-spy --gil) the two were 3.5 % of the edge's samples. The same order, one call.
    from sippy.Core.EventDispatcher import EventListener

    def earlier(self: Any, other: Any) -> bool:
        result: bool = self.etime.monot < other.etime.monot
        return result

    EventListener.__lt__ = earlier


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
    # calls/s that was a quarter of the SIP side's time (profiled with py-spy --gil). Every use of
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


# header names whose spelling `_rfc_header_spelling` keeps (sippy's classes and the usual others)
SPELLED_NAMES_KEPT = 256


def _rfc_header_spelling() -> None:
    # Why: sippy writes a header's name as its class's getCanName() gives it, which for every name
    # it has no class for (and WWW-Authenticate, Min-Expires...) is str.capitalize(): `Www-
    # authenticate`, `Session-expires`. Every name written goes through the RFCs' spelling
    # (`header_names`), wherever the header was built or parsed, in both of SipHeader's writers.
    from sippy.SipHeader import SipHeader

    from callcenter_sip_edge.sippy.header_names import canonical

    # Every sippy getCanName() depends on the body's class, the header's name and `compact` only, so
    # the spelled name is kept per (class, name, compact): one dict lookup per header written
    # instead of two calls and a table lookup (1.5 % of the SIP side's samples at 100 calls/s).
    # Bounded: names of parsed headers come from peers.
    spelled: dict[tuple[type, str, bool], str] = {}

    def name_of(self: Any, compact: bool) -> str:
        key = (self.body.__class__, self.name, compact)
        name = spelled.get(key)
        if name is None:
            name = canonical(str(self.body.getCanName(self.name, compact)))
            if len(spelled) < SPELLED_NAMES_KEPT:
                spelled[key] = name
        return name

    def to_str(self: Any) -> str:
        return name_of(self, False) + ": " + str(self.body)

    def local_str(self: Any, local_addr: Any = None, compact: bool = False) -> str:
        return name_of(self, compact) + ": " + str(self.body.localStr(local_addr))

    SipHeader.__str__ = to_str
    SipHeader.localStr = local_str


# how long the host's own address, as sippy's placeholder renders it, is kept before looking it up again
HOST_ADDRESS_TTL_S = 1.0


def _host_address_looked_up_once_a_second() -> None:
    # Why: sippy's placeholder for the local address (MyAddress), rendered without a local address
    # (str() of our own From, To or Contact: each leg's checkpoint, `resume.dialog_snapshot`), asks
    # the resolver for gethostbyname(gethostname()) every time: 10 us here through NSS (more when
    # the name is not in /etc/hosts and goes to DNS), a dozen times per call, 2 % of the SIP
    # thread's samples at 100 calls/s (py-spy). The answer is kept for HOST_ADDRESS_TTL_S, so a
    # change of the host's address is still seen within a second.
    import time as _time

    from sippy.SipConf import MyAddress

    original_str = MyAddress.__str__
    cached: list[Any] = [None, 0.0]   # (address, monotonic time it was looked up)

    def address(self: Any) -> str:
        now = _time.monotonic()
        if cached[0] is None or now - cached[1] >= HOST_ADDRESS_TTL_S:
            cached[0], cached[1] = original_str(self), now
        result: str = cached[0]
        return result

    MyAddress.__str__ = address
