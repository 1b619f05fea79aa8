"""sippy's own output, captured into the structured log: one record per message, values escaped and
cut, each cause rate-limited (`log_limits.RateLimitedLog`).

Reads: what sippy writes through `dump_exception` (a traceback plus the raw datagram, to stdout),
`print` (e.g. "invalid status code in SIP response" and the message itself) and its SipLogger (to
stderr). Writes: `sip.stack_error` / `sip.stack_output` / `sip.stack_log` records.

Why: a malformed datagram made sippy print a 40-line traceback and the raw message, line by line,
outside our JSON lines: 12,000 bad datagrams gave ~2,000 tracebacks and 42,000 lines no log
collector could parse, and a header holding a JSON object came out as a record of its own.
sippy binds `dump_exception` into each module at import time and calls the builtin `print`, so both
are replaced in every loaded sippy module (a module global shadows the builtin).

Knows sippy's module layout; nothing outside `callcenter_sip_edge.sippy` does.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

from callcenter_sip_edge.log_limits import RateLimitedLog

# the sippy modules that print or dump exceptions on the edge's paths; any other sippy module
# already loaded when the capture starts is covered too
_NOISY_MODULES = ("sippy.Core.EventDispatcher", "sippy.Network_server", "sippy.Udp_server", "sippy.Signal",
                  "sippy.SipTransactionManager", "sippy.SipMsg", "sippy.SipRequest", "sippy.UA")
# sippy's SipLogger levels: records below WARN are its per-message traces (off unless debugging)
_SIPLOG_WARN = 2
_ADDRESS = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?|\[[0-9A-Fa-f:.]+\](?::\d+)?|<[^>]*>|\d+")


def _cause(text: str) -> str:
    """The template of a message: addresses and numbers out, so one kind of complaint is one cause."""
    return _ADDRESS.sub("#", text.split("\n", 1)[0])[:80]


def capture_sippy_output(limited_log: RateLimitedLog) -> None:
    """Send sippy's dump_exception and print output to `limited_log` from now on."""

    def dump_exception(msg: str, f: Any = None, extra: Any = None) -> None:
        exc_type, exc, _tb = sys.exc_info()
        error = type(exc).__name__ if exc_type is not None else "none"
        limited_log.emit("warning", "sip.stack_error", f"{error}:{_cause(str(msg))}", message=str(msg),
                         error=error, detail=str(exc) if exc is not None else "",
                         datagram=str(extra) if extra is not None else "")

    def print_(*args: Any, **_kwargs: Any) -> None:
        text = " ".join(str(a) for a in args)
        limited_log.emit("info", "sip.stack_output", _cause(text), text=text)

    for name in _NOISY_MODULES:
        importlib.import_module(name)
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "sippy" or name.startswith("sippy.")):
            continue
        if hasattr(module, "dump_exception"):
            module.dump_exception = dump_exception  # type: ignore[attr-defined]
        module.print = print_  # type: ignore[attr-defined]


class SipLoggerToLog:
    """Stands in for sippy's SipLogger (`global_config['_sip_logger']`): its WARN and worse records
    become rate-limited `sip.stack_log` records; its per-message traces (INFO) cost one comparison."""

    level = _SIPLOG_WARN

    def __init__(self, limited_log: RateLimitedLog) -> None:
        self._log = limited_log

    def write(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("level", 1) < _SIPLOG_WARN:
            return
        text = "".join(str(a) for a in args)
        self._log.emit("warning", "sip.stack_log", _cause(text), text=text, sip_call_id=str(kwargs.get("call_id", "")))

    def shutdown(self) -> None:
        return None
