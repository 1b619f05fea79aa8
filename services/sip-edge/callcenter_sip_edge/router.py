"""All calls of the edge: admission of new INVITEs, out-of-dialog requests, commands, shutdown.

Reads: requests that match no dialog (from sippy's transaction manager) and the typed commands
`SipStack` forwards (`execute`: the call's handler from `call.COMMAND_HANDLERS`).
Writes: SIP responses to out-of-dialog requests, new `Call`s, facts through the `emit` callback,
and the stack's close.

Runs on the SIP thread only. This module imports sippy at import time, so `SipStack` imports it
from that thread (sippy's reactor binds to the importing thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import structlog
from sippy.SipGenericHF import SipGenericHF
from sippy.SipHeader import SipHeader
from sippy.Time.Timeout import Timeout
from structlog.contextvars import bind_contextvars, reset_contextvars

from callcenter.contract.commands import Command
from callcenter_sip_edge.call import COMMAND_HANDLERS, Call, refuse_command
from callcenter_sip_edge.facts import Fact, FactSink
from callcenter_sip_edge.gc_policy import CycleCollector
from callcenter_sip_edge.guard import Refusal, SourceGuard
from callcenter_sip_edge.legs import CallerInfo
from callcenter_sip_edge.sdp import media_type_of
from callcenter_sip_edge.sippy import dialog, transport

log = structlog.get_logger(__name__)

DRAIN_RETRY_AFTER_S = 30
SHUTDOWN_FLUSH_S = 0.3
GC_TICK_S = 5.0

SIP_METHODS_ALLOWED = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
# RFC 3261 20.43: warn-code 304 with a pseudonym as warn-agent
MEDIA_NOT_AVAILABLE_WARNING = '304 callcenter "Media type not available (neither RTP nor MSRP)"'
_KNOWN_SIP_METHODS = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "PRACK",
                                "REFER", "NOTIFY", "SUBSCRIBE", "REGISTER", "MESSAGE", "PUBLISH"})
PRIORITY_HEADER = "x-cc-priority"
PRIORITY_URI_PARAM = "cc_priority"
# new INVITEs while the edge drains (the guard still answers 403 to an untrusted source first)
DRAINING = Refusal(503, "Service Unavailable", DRAIN_RETRY_AFTER_S, "draining")


def call_priority(req: Any) -> int | None:
    """The caller's priority (-100..100, higher is served sooner) from an `X-CC-Priority` header
    or a `;cc_priority=` Request-URI parameter, as set by the carrier or an upstream proxy."""
    raw: str | None = None
    if req.countHFs(PRIORITY_HEADER) > 0:
        raw = str(req.getHFBody(PRIORITY_HEADER)).strip()
    else:
        for param in getattr(req.getRURI(), "other", []):
            name, _, value = str(param).partition("=")
            if name.lower() == PRIORITY_URI_PARAM:
                raw = value
    if raw is None:
        return None
    try:
        return max(-100, min(100, int(raw)))
    except ValueError:
        log.info("call.bad_priority", value=raw[:32])
        return None


class CallRouter:
    """All calls of the edge: out-of-dialog requests, commands by edge call id, shutdown."""

    def __init__(self, *, host: str, port: int, emit: FactSink, advertised_host: str | None,
                 max_message_bytes: int, user_agent: str, guard: SourceGuard | None = None) -> None:
        self.guard = guard or SourceGuard()
        self._emit_fact = emit
        self.calls: dict[str, Call] = {}
        self.accepting = True
        self.sip_config = transport.make_sip_config(
            host=host, port=port, user_agent=user_agent, advertised_host=advertised_host,
            max_message_bytes=max_message_bytes, on_screened=_log_screened, on_request=self._recv_out_of_dialog,
        )
        self._cycles = CycleCollector()
        Timeout(self._collect_cycles, GC_TICK_S, -1)

    @property
    def bound_address(self) -> tuple[str, int]:
        return transport.bound_address(self.sip_config)

    def emit(self, kind: str, call_id: str, data: dict[str, Any]) -> None:
        self._emit_fact(Fact(kind=kind, call_id=call_id, data=data, ts_ms=int(time.time() * 1000)))

    def forget(self, call_id: str) -> None:
        self.calls.pop(call_id, None)

    def _collect_cycles(self) -> None:
        try:
            self._cycles.tick(len(self.calls))
        except Exception:
            log.exception("sip.gc_failed")

    # ------------------------------------------------------------------ SIP in
    def _recv_out_of_dialog(self, req: Any, sip_t: Any) -> Any:
        """Sippy's callback for requests that match no dialog."""
        try:
            return self._route(req, sip_t)
        except Exception:
            log.exception("sip.request_failed", method=req.getMethod())
            if req.getMethod() == "ACK":
                return None
            return (req.genResponse(400, "Bad Request"), None, None)

    def _route(self, req: Any, sip_t: Any) -> Any:
        method = req.getMethod()
        if method == "ACK":
            return None
        if req.getHFBody("to").getTag() is not None:
            return (req.genResponse(481, "Call Leg/Transaction Does Not Exist"), None, None)
        if method == "OPTIONS":
            return (_with_header(req.genResponse(200, "OK"), "allow", SIP_METHODS_ALLOWED), None, None)
        if method != "INVITE":
            if method == "BYE":
                return (req.genResponse(481, "Call Leg/Transaction Does Not Exist"), None, None)
            if method in _KNOWN_SIP_METHODS:
                resp = req.genResponse(405, "Method Not Allowed")
                return (_with_header(resp, "allow", SIP_METHODS_ALLOWED), None, None)
            return (req.genResponse(501, "Not Implemented"), None, None)
        if req.countHFs("max-forwards") > 0 and req.getHFBody("max-forwards").getNum() <= 0:
            return (req.genResponse(483, "Too Many Hops"), None, None)
        source_ip = str(req.getSource()[0])
        refusal = self.guard.check(source_ip, closed=None if self.accepting else DRAINING)
        if refusal is not None:
            if refusal is not DRAINING:
                log.debug("sip.invite_refused", reason=refusal.reason, source=source_ip)
            resp = req.genResponse(refusal.code, refusal.phrase)
            if refusal.retry_after_s is not None:
                resp = _with_header(resp, "retry-after", str(refusal.retry_after_s))
            return (resp, None, None)
        if req.getBody() is None:
            # INVITE without an offer is not supported (the first leg would have to offer)
            return (req.genResponse(488, "Not Acceptable Here"), None, None)
        if req.countHFs("contact") == 0:
            return (req.genResponse(400, "Bad Request - Missing Contact"), None, None)
        try:
            # sippy parses headers lazily: parse the ones a call needs before it exists
            req.getHFBody("contact").getUrl()
            req.getHFBody("from").getUrl()
            req.getHFBody("to").getUrl()
            req.getRURI()
            req.getBody().parse()
        except Exception:
            return (req.genResponse(400, "Bad Request"), None, None)
        media_type = media_type_of(str(req.getBody()))
        if media_type is None:
            # neither RTP (audio) nor MSRP (chat), e.g. T.38 fax: no call is created
            log.info("sip.invite_refused", reason="media_not_acceptable", source=source_ip,
                     media=_first_media_line(str(req.getBody())))
            resp = _with_header(req.genResponse(488, "Not Acceptable Here"), "warning", MEDIA_NOT_AVAILABLE_WARNING)
            return (resp, None, None)
        return self._new_call(req, sip_t, media_type)

    def _new_call(self, req: Any, sip_t: Any, media_type: str) -> Any:
        from_hf = req.getHFBody("from")
        source_host, source_port = req.getSource()
        info = CallerInfo(
            flow=req.getRURI().username or "",
            caller_user=from_hf.getUrl().username or "",
            caller_uri=str(from_hf.getUrl()),
            caller_display=from_hf.getUri().name or None,
            sip_call_id=str(req.getHFBody("call-id")),
            source=f"{source_host}:{source_port}",
            priority=call_priority(req),
            media_type=media_type,
        )
        call = Call(router=self, call_id=uuid4().hex, info=info)
        call.caller = dialog.answering_ua(self.sip_config, call.event_cb(call.caller_events))
        self.calls[call.call_id] = call
        try:
            result = call.caller.recvRequest(req, sip_t)
        except Exception:
            # sippy gave up on this INVITE half-way (a header it parses lazily is malformed): the
            # call was never reported, so forget it (the caller gets a 400 from our caller)
            self.forget(call.call_id)
            call.ended = True
            call.caller.event_cb = None
            raise
        if call.ended:
            return result
        log.info("call.arrived", call_id=call.call_id, flow=info.flow, caller=info.caller_user,
                 sip_call_id=info.sip_call_id, media_type=info.media_type)
        self.emit("call_arrived", call.call_id, {
            "flow": info.flow, "caller": info.caller_user, "caller_uri": info.caller_uri,
            "caller_display": info.caller_display, "sip_call_id": info.sip_call_id, "source": info.source,
            "priority": info.priority, "media_type": info.media_type,
        })
        return result

    # ------------------------------------------------------------------ commands
    def execute(self, command: Command) -> None:
        """Give a typed command to its call's handler (`COMMAND_HANDLERS`, one per command class)."""
        handler = COMMAND_HANDLERS.get(type(command))
        call = self.calls.get(command.call_id)
        if handler is None or call is None or call.ended:
            # the edge has no such call (ended and forgotten, or never known); every command still
            # ends in a report, so the dispatcher frees what the command would have held
            refuse_command(self.emit, command.call_id, command.TYPE.removeprefix("command."),
                           "unknown_call" if handler is not None else "invalid", getattr(command, "offer_id", None),
                           getattr(command, "purpose", None))
            return
        tokens = bind_contextvars(call_id=command.call_id)
        try:
            handler(call, command)
        except Exception:
            # half carried out: refuse it, and end the call rather than leave it inconsistent
            call.refuse(command.TYPE.removeprefix("command."), "internal_error",
                        offer_id=getattr(command, "offer_id", None), purpose=getattr(command, "purpose", None))
            call.fail_internally(command.TYPE)
        finally:
            reset_contextvars(**tokens)

    def hangup_all(self, reason: str) -> None:
        """Hang up every call (end of a drain, shutdown); each reports `call_ended(by=edge)`."""
        for call in list(self.calls.values()):
            tokens = bind_contextvars(call_id=call.call_id)
            try:
                call.hang_up(reason)
            except Exception:
                log.exception("call.hangup_failed")
            finally:
                reset_contextvars(**tokens)

    def shutdown(self, then: Callable[[], None]) -> None:
        """Hang up every call, give the BYEs/CANCELs a moment to leave, close sockets, then `then()`."""
        self.accepting = False
        had_calls = bool(self.calls)
        self.hangup_all("shutdown")
        Timeout(self._close, SHUTDOWN_FLUSH_S if had_calls else 0.0, 1, then)

    def _close(self, then: Callable[[], None]) -> None:
        try:
            transport.close_stack(self.sip_config)
        except Exception:
            log.exception("sip.shutdown_failed")
        finally:
            then()


def _with_header(resp: Any, name: str, value: str) -> Any:
    resp.appendHeader(SipHeader(name=name, body=SipGenericHF(value, name)))
    return resp


def _log_screened(reason: str, source: str, answered: bool) -> None:
    if answered:
        log.warning("sip.bad_request_answered", code=400, problem=reason, source=source)
    else:
        log.warning("sip.datagram_dropped", reason=reason, source=source)


def _first_media_line(sdp: str) -> str:
    for line in sdp.splitlines():
        if line.startswith("m="):
            return line[:80]
    return ""
