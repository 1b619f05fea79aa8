"""All calls of the edge: admission of new INVITEs, out-of-dialog requests, commands, shutdown.

Reads: requests that match no dialog (from sippy's transaction manager) and the typed commands
`SipStack` forwards (`execute`: the call's handler from `call.COMMAND_HANDLERS`).
Writes: SIP responses to out-of-dialog requests, new `Call`s, facts through the `emit` callback,
and the stack's close.

Runs in sippy's turns only. This module imports sippy at import time, so `SipStack` imports it
when it starts, after the patches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import uuid4

import structlog
from sippy.SipGenericHF import SipGenericHF
from sippy.SipHeader import SipHeader
from sippy.Time.Timeout import Timeout
from structlog.contextvars import bind_contextvars, reset_contextvars

from callcenter.contract.commands import Command, Ring
from callcenter_sip_edge.call import COMMAND_HANDLERS, Call, refuse_command
from callcenter_sip_edge.confirmed import arrived
from callcenter_sip_edge.facts import Fact, FactSink
from callcenter_sip_edge.gc_policy import CycleCollector
from callcenter_sip_edge.guard import Refusal, SourceGuard
from callcenter_sip_edge.log_limits import RateLimitedLog
from callcenter_sip_edge.registrar import Registrar, RegistrarSetup
from callcenter_sip_edge.sdp import media_type_of
from callcenter_sip_edge.session_options import SessionTimerOptions
from callcenter_sip_edge.session_timer import interval_too_small
from callcenter_sip_edge.sip_fields import FieldRefusal, read_caller
from callcenter_sip_edge.sippy import dialog, transport
from callcenter_sip_edge.sippy.streams import StreamOptions

log = structlog.get_logger(__name__)

DRAIN_RETRY_AFTER_S = 30
SHUTDOWN_FLUSH_S = 0.3
GC_TICK_S = 5.0
LOG_FLUSH_S = 10.0

SIP_METHODS_ALLOWED = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
# RFC 3261 20.43: warn-code 304 with a pseudonym as warn-agent
MEDIA_NOT_AVAILABLE_WARNING = '304 callcenter "Media type not available (neither RTP nor MSRP)"'
_KNOWN_SIP_METHODS = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "PRACK",
                                "REFER", "NOTIFY", "SUBSCRIBE", "REGISTER", "MESSAGE", "PUBLISH"})
# new INVITEs while the edge drains (the guard still answers 403 to an untrusted source first)
DRAINING = Refusal(503, "Service Unavailable", DRAIN_RETRY_AFTER_S, "draining")


class CallRouter:
    """All calls of the edge: out-of-dialog requests, commands by edge call id, shutdown."""

    def __init__(self, *, host: str, port: int, emit: FactSink, advertised_host: str | None,
                 max_message_bytes: int, user_agent: str, guard: SourceGuard | None = None,
                 streams: StreamOptions | None = None, registrar: RegistrarSetup | None = None,
                 session: SessionTimerOptions | None = None) -> None:
        self.guard = guard or SourceGuard()
        self.session_options = session or SessionTimerOptions()
        self._emit_fact = emit
        self.calls: dict[str, Call] = {}
        # the INVITE of each live call by (Call-ID, From tag, CSeq): a second branch of it is a
        # merged request (RFC 3261 8.2.2.2), answered 482 instead of making a second call
        self._invites: dict[tuple[str, str, int], str] = {}
        self._invite_of: dict[str, tuple[str, str, int]] = {}
        self.accepting = True
        # what outsiders cause (bad datagrams, refused INVITEs, sippy's complaints) is logged per cause
        # at a bounded rate; `_flush_logs` writes the counts of what was left out
        self.limited_log = RateLimitedLog()
        self.sip_config = transport.make_sip_config(
            host=host, port=port, user_agent=user_agent, advertised_host=advertised_host,
            max_message_bytes=max_message_bytes, on_screened=self._log_screened, on_request=self._recv_out_of_dialog,
            guard=self.guard, limited_log=self.limited_log, streams=streams,
        )
        self.registrar = None if registrar is None else Registrar(
            registrar.options, registrar.nonces, registrar.submit, self.sip_config, self.limited_log)
        self._cycles = CycleCollector()
        Timeout(self._collect_cycles, GC_TICK_S, -1)
        Timeout(self.limited_log.flush, LOG_FLUSH_S, -1)

    @property
    def bound_address(self) -> tuple[str, int]:
        return transport.bound_address(self.sip_config)

    def emit(self, kind: str, call_id: str, data: dict[str, Any]) -> None:
        self._emit_fact(Fact(kind=kind, call_id=call_id, data=data, ts_ms=int(time.time() * 1000)))

    def forget(self, call_id: str) -> None:
        self.calls.pop(call_id, None)
        key = self._invite_of.pop(call_id, None)
        if key is not None:
            self._invites.pop(key, None)

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
        except Exception as exc:
            self.limited_log.emit("warning", "sip.request_failed", type(exc).__name__, method=req.getMethod(),
                                  error=str(exc), exc_info=True)
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
        if method == "REGISTER" and self.registrar is not None:
            return self.registrar.receive(req, sip_t)
        if method != "INVITE":
            if method == "BYE":
                return (req.genResponse(481, "Call Leg/Transaction Does Not Exist"), None, None)
            if method in _KNOWN_SIP_METHODS:
                resp = req.genResponse(405, "Method Not Allowed")
                return (_with_header(resp, "allow", SIP_METHODS_ALLOWED), None, None)
            return (req.genResponse(501, "Not Implemented"), None, None)
        if req.countHFs("max-forwards") > 0 and req.getHFBody("max-forwards").getNum() <= 0:
            return (req.genResponse(483, "Too Many Hops"), None, None)
        invite_key = (str(req.getHFBody("call-id")), str(req.getHFBody("from").getTag()),
                      int(req.getHFBody("cseq").getCSeqNum()))
        if invite_key in self._invites:
            self.limited_log.emit("info", "sip.invite_refused", "merged_request", reason="merged_request",
                                  source=str(req.getSource()[0]))
            return (req.genResponse(482, "Loop Detected"), None, None)
        source_ip = str(req.getSource()[0])
        refusal = self.guard.check(source_ip, closed=None if self.accepting else DRAINING,
                                   at=transport.arrival_time(req))
        if refusal is not None:
            if refusal is not DRAINING:
                self.limited_log.emit("info", "sip.invite_refused", refusal.reason, reason=refusal.reason,
                                      source=source_ip)
            resp = req.genResponse(refusal.code, refusal.phrase)
            if refusal.retry_after_s is not None:
                resp = _with_header(resp, "retry-after", str(refusal.retry_after_s))
            return (resp, None, None)
        too_small = interval_too_small(req, self.session_options)
        if too_small is not None:
            self.limited_log.emit("info", "sip.invite_refused", "session_interval_too_small",
                                  reason="session_interval_too_small", source=source_ip)
            return (too_small, None, None)
        if req.countHFs("contact") == 0:
            return (req.genResponse(400, "Bad Request - Missing Contact"), None, None)
        try:
            # sippy parses headers lazily: parse the ones a call needs before it exists
            req.getHFBody("contact").getUrl()
            req.getHFBody("from").getUrl()
            req.getHFBody("to").getUrl()
            req.getRURI()
            if req.getBody() is not None:
                req.getBody().parse()
        except Exception:
            return (req.genResponse(400, "Bad Request"), None, None)
        if req.getBody() is None:
            # a late offer (late_offer.py): the first leg to answer offers, the caller answers in its ACK
            return self._new_call(req, sip_t, "audio", invite_key)
        media_type = media_type_of(str(req.getBody()))
        if media_type is None:
            # neither RTP (audio) nor MSRP (chat), e.g. T.38 fax: no call is created
            self.limited_log.emit("info", "sip.invite_refused", "media_not_acceptable", reason="media_not_acceptable",
                                  source=source_ip, media=_first_media_line(str(req.getBody())))
            resp = _with_header(req.genResponse(488, "Not Acceptable Here"), "warning", MEDIA_NOT_AVAILABLE_WARNING)
            return (resp, None, None)
        return self._new_call(req, sip_t, media_type, invite_key)

    def _new_call(self, req: Any, sip_t: Any, media_type: str, invite_key: tuple[str, str, int]) -> Any:
        source_host, source_port = req.getSource()
        info = read_caller(req, source=f"{source_host}:{source_port}", media_type=media_type,
                           priority_trusted=self.guard.may_set_priority(str(source_host)))
        if isinstance(info, FieldRefusal):
            self.limited_log.emit("info", "sip.invite_refused", info.field, reason="bad_field", field=info.field,
                                  length=info.length, code=info.code, source=str(source_host))
            return (req.genResponse(info.code, info.phrase), None, None)
        call = Call(router=self, call_id=uuid4().hex, info=info)
        call.caller = dialog.answering_ua(self.sip_config, call.event_cb(call.caller_events))
        call.session_timers.caller_invite(req)
        transport.remember_peer(call.caller, str(source_host).strip("[]"))
        self.calls[call.call_id] = call
        self._invites[invite_key] = call.call_id
        self._invite_of[call.call_id] = invite_key
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
        arrived(call)   # a restarted edge answers this INVITE if we have not (adoption.py)
        return result

    def _log_screened(self, reason: str, source: str, answered_with: int | None) -> None:
        if answered_with is not None:
            self.limited_log.emit("warning", "sip.bad_request_answered", reason, code=answered_with, problem=reason,
                                  source=source)
        else:
            self.limited_log.emit("warning", "sip.datagram_dropped", reason, reason=reason, source=source)

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

    def ring_registered(self, args: tuple[Ring, list[str], str]) -> None:
        """`command.ring` to an agent's AOR with its live contacts' targets, best first (service.py
        looked them up): none, refused (`not_registered`, or `registered_elsewhere` when its contacts
        are connections another edge holds: the dispatcher re-offers the call at once, no penalty);
        one, rung as any agent URI; several, all at once (`Forks`, one agent)."""
        command, targets, refusal = args
        call = self.calls.get(command.call_id)
        if not targets or len(targets) == 1 or call is None or call.ended:
            if targets:
                self.execute(replace(command, uri=targets[0]))
            elif call is None or call.ended:
                self.execute(command)   # refused as unknown_call
            else:
                call.refuse("ring", refusal, offer_id=command.offer_id, agent_id=command.agent_id)
            return
        tokens = bind_contextvars(call_id=command.call_id)
        try:
            call.forks.start(command.offer_id, [{"agent_id": command.agent_id, "uri": t} for t in targets],
                             command.timeout_s, command.caller_display, one_agent=True,
                             whisper_uri=command.whisper_uri)
        except Exception:
            call.refuse("ring", "internal_error", offer_id=command.offer_id)
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




def _first_media_line(sdp: str) -> str:
    for line in sdp.splitlines():
        if line.startswith("m="):
            return line[:80]
    return ""
