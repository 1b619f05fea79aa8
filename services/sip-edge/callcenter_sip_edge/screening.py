"""Screening of every datagram before sippy parses it: pass it on, drop it, or answer it with a 400.

Reads: the raw bytes of one datagram. Writes: nothing (returns a `Screening`; the transaction
manager in `sippy/transport.py` acts on it). Pure Python, no sippy.
"""

from __future__ import annotations

import re

# sippy's receiver reads with recvfrom(8192): anything this long was truncated by the kernel.
SIPPY_RECV_BYTES = 8192


_COMPACT_HEADER_NAMES = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
                         "l": "content-length", "c": "content-type"}
_MANDATORY_HEADERS = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}
# headers a message has exactly once (RFC 3261 7.3.1: no comma list); sippy takes some of them by
# position and answers others from a dict, so two Call-IDs made it raise KeyError in sendResponse
_SINGLE_HEADERS = ("call-id", "cseq", "from", "to")
# the only headers screening looks at, by every spelling it accepts (lower case, full or compact):
# the others are skipped without being collected (each datagram is screened: issue 15)
_SCREENED = {name: name for name in _MANDATORY_HEADERS} | {
    short: full for short, full in _COMPACT_HEADER_NAMES.items() if full in _MANDATORY_HEADERS}
_HEAD_END = re.compile(r"\r\n\r\n|\n\n")
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
    head = _HEAD_END.split(text, maxsplit=1)[0]
    lines = head.splitlines()
    start_line = lines[0].strip() if lines else ""
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line or line[0] in " \t":
            continue  # folded continuation, irrelevant for presence checks
        name, sep, _value = line.partition(":")
        if not sep:
            continue
        key = _SCREENED.get(name.strip().lower())
        if key is not None:
            headers.setdefault(key, []).append(line)
    is_response = start_line.startswith("SIP/2.0 ")
    request_line = None if is_response else _REQUEST_LINE.match(start_line)
    if not is_response and request_line is None:
        return Screening(drop_reason="bad_start_line")
    missing = [name for name in _MANDATORY_HEADERS if name not in headers]
    cseq_ok = "cseq" in headers and _CSEQ_VALUE.match(headers["cseq"][0].partition(":")[2].strip())
    repeated = [name for name in _SINGLE_HEADERS if len(headers.get(name, ())) > 1]
    # a CR that ends no line: a header value with a line break smuggled in
    bare_cr = head.count("\r") != head.count("\r\n")
    if not missing and cseq_ok and not repeated and not bare_cr:
        return PASS
    if is_response or request_line is None or request_line.group(1).upper() == "ACK":
        return Screening(drop_reason="repeated_headers" if repeated and not missing else "missing_headers")
    if "via" not in headers:
        return Screening(drop_reason="missing_via")
    if missing:
        problem = f"Missing {', '.join(_MANDATORY_HEADERS[name] for name in missing)}"
    elif repeated:
        problem = f"Repeated {', '.join(_MANDATORY_HEADERS[name] for name in repeated)}"
    else:
        problem = "Bad CSeq" if not cseq_ok else "Bare CR"
    reply_lines = [f"SIP/2.0 400 Bad Request - {problem}", *headers["via"]]
    for name in ("from", "to", "call-id", "cseq"):
        reply_lines.extend(headers.get(name, ())[:1])
    reply_lines += ["Content-Length: 0", "", ""]
    return Screening(drop_reason=problem, reply="\r\n".join(reply_lines).encode())


