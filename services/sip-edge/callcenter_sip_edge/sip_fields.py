"""The fields of `report.call_arrived` read from a new INVITE, bounded and validated before a call
exists (limits from `callcenter.contract.limits`, the same the SQL columns and the api use).

Reads: a parsed INVITE (sippy's request, used through its public getters only) and whether its
source may set a priority. Writes: nothing; returns the `CallerInfo` or the 4xx to answer.

Why here and not in the dispatcher: a value PostgreSQL refuses (a 3.6 KB flow name) dead-letters
the CDR at the very end of the call, and anyone can send such INVITEs. Refused at the edge, it costs
one response and a (rate-limited) log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from callcenter.contract import limits
from callcenter_sip_edge.legs import CallerInfo

log = structlog.get_logger(__name__)

PRIORITY_HEADER = "x-cc-priority"
PRIORITY_URI_PARAM = "cc_priority"
PRIORITY_MIN, PRIORITY_MAX = -100, 100


@dataclass(frozen=True, slots=True)
class FieldRefusal:
    """A field that cannot enter a report: the response and what was wrong (for the log)."""

    code: int
    phrase: str
    field: str
    length: int


def _refuse(code: int, phrase: str, field: str, value: str) -> FieldRefusal:
    return FieldRefusal(code, phrase, field, len(value))


def read_caller(req: Any, *, source: str, media_type: str, priority_trusted: bool) -> CallerInfo | FieldRefusal:
    """The caller's fields, or why not: 414 for an over-long Request-URI, 404 for a Request-URI
    user that is no flow id (also `support;cc_priority=9`: params in the user part), 400 for an
    over-long or malformed caller, caller URI, display name or Call-ID."""
    ruri = req.getRURI()
    raw_ruri = str(getattr(ruri, "original_uri", None) or ruri)
    if len(raw_ruri) > limits.REQUEST_URI_MAX:
        return _refuse(414, "Request-URI Too Long", "request_uri", raw_ruri)
    flow = ruri.username or ""
    if getattr(ruri, "userparams", None) or not limits.is_flow_id(flow):
        return _refuse(404, "Not Found", "flow", flow)
    from_hf = req.getHFBody("from")
    caller_user = from_hf.getUrl().username or ""
    if not limits.is_printable(caller_user, limits.CALLER_MAX, spaces=False):
        return _refuse(400, "Bad Request - Caller Too Long Or Malformed", "caller", caller_user)
    caller_uri = str(from_hf.getUrl())
    if not limits.is_printable(caller_uri, limits.SIP_URI_MAX, spaces=False):
        return _refuse(400, "Bad Request - From URI Too Long Or Malformed", "caller_uri", caller_uri)
    display = from_hf.getUri().name or None
    if display is not None and not limits.is_printable(display, limits.DISPLAY_NAME_MAX):
        return _refuse(400, "Bad Request - Display Name Too Long Or Malformed", "caller_display", display)
    sip_call_id = str(req.getHFBody("call-id"))
    if not sip_call_id or not limits.is_printable(sip_call_id, limits.SIP_CALL_ID_MAX, spaces=False):
        return _refuse(400, "Bad Request - Call-ID Too Long Or Malformed", "sip_call_id", sip_call_id)
    if not limits.is_printable(source, limits.SOURCE_MAX, spaces=False):
        return _refuse(400, "Bad Request", "source", source)
    return CallerInfo(flow=flow, caller_user=caller_user, caller_uri=caller_uri, caller_display=display,
                      sip_call_id=sip_call_id, source=source, media_type=media_type,
                      priority=call_priority(req) if priority_trusted else None)


def call_priority(req: Any) -> int | None:
    """The caller's priority (-100..100, higher is served sooner) from an `X-CC-Priority` header
    or a `;cc_priority=` Request-URI parameter, as set by the carrier or an upstream proxy (the
    caller reads this only for a source in `CC_SIP_PRIORITY_NETWORKS`)."""
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
    if len(raw) > 8:
        log.info("call.bad_priority", length=len(raw))
        return None
    try:
        return max(PRIORITY_MIN, min(PRIORITY_MAX, int(raw)))
    except ValueError:
        log.info("call.bad_priority", value=repr(raw))
        return None
