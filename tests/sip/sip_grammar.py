"""RFC 3261 checks of the headers of one SIP message, for tests of what the edge sends.

Reads: the text of a message as SIPp's -trace_msg logged it, and the datagram's size in bytes.
Writes: nothing; `header_problems()` returns what breaks the grammar (empty when all is well).

Checked (RFC 3261 sections 7, 8, 20 and the ABNF of 25.1):
- the start line (a Request-URI is a bare URI, never a name-addr);
- Via: SIP/2.0/transport, sent-by, and a branch with the magic cookie z9hG4bK;
- From and To: name-addr or addr-spec, a display name is tokens or a quoted string, an
  addr-spec carries no URI parameters (they would read as header parameters); From always has a
  tag, and so has To in every response but 100;
- Contact: the project's stricter rule, `<uri>` with no display name, because peers take it as
  it stands as the Request-URI of their next request (SIPp's [next_url]); required in an INVITE
  and in a 101-299 response to one;
- CSeq (number, and in a request the request's own method), Max-Forwards (every request,
  0-255), Call-ID (word["@"word]);
- Content-Length present and equal to the body's length in bytes, Content-Type with a body;
- no second copy of a header that takes a single value.
"""

from __future__ import annotations

import re

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
            "c": "content-type", "e": "content-encoding", "s": "subject", "k": "supported"}
_SINGLE_VALUE = ("call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type")

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_QUOTED = r'"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
_DISPLAY_NAME = rf"(?:{_TOKEN}(?:[ \t]+{_TOKEN})*|{_QUOTED})"
_URI_IN_BRACKETS = r"sips?:[^\s<>\"]+"
_ADDR_SPEC = r"sips?:[^\s<>\";,?]+"   # outside brackets: no ';', ',' or '?' (RFC 3261 20.10)
_GEN_VALUE = rf"(?:{_TOKEN}|\[[0-9A-Fa-f:.]+\]|{_QUOTED})"
_PARAMS = rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*{_GEN_VALUE})?)*"
_ADDRESS = re.compile(rf"^(?:(?:{_DISPLAY_NAME}[ \t]*)?<{_URI_IN_BRACKETS}>|{_ADDR_SPEC})(?P<params>{_PARAMS})$")
_CONTACT = re.compile(rf"^<{_URI_IN_BRACKETS}>{_PARAMS}$")
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)"
_VIA = re.compile(rf"^SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*{_TOKEN}[ \t]+{_HOST}(?::\d{{1,5}})?(?P<params>{_PARAMS})$")
_BRANCH = re.compile(rf";[ \t]*branch[ \t]*=[ \t]*(?P<value>{_TOKEN})", re.IGNORECASE)
_TAG = re.compile(rf";[ \t]*tag[ \t]*=[ \t]*{_TOKEN}", re.IGNORECASE)
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID = re.compile(rf"^{_WORD}(?:@{_WORD})?$")
_CSEQ = re.compile(rf"^(?P<number>\d{{1,10}})[ \t]+(?P<method>{_TOKEN})$")
_REQUEST_LINE = re.compile(rf"^(?P<method>{_TOKEN}) {_URI_IN_BRACKETS} SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 (?P<code>[1-6]\d\d) [^\r\n]*$")
_HEADER_LINE = re.compile(rf"^(?P<name>{_TOKEN})[ \t]*:[ \t]*(?P<value>.*)$")


def header_problems(text: str, size: int) -> list[str]:
    """What in this message breaks RFC 3261's grammar (or the Contact rule above); [] if nothing.
    `size` is the datagram's length in bytes, to check Content-Length against. Lines may end in LF
    (a trace read as text has lost the CRs): they are counted as the CRLF that SIP sends."""
    text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    head, blank_line, _body = text.partition("\r\n\r\n")
    if not blank_line:   # no body, and the trace lost the end of the empty line
        head = text.rstrip("\r\n")
    lines = head.split("\r\n")
    problems: list[str] = []
    start = lines[0]
    request = _REQUEST_LINE.match(start)
    status = _STATUS_LINE.match(start)
    if request is None and status is None:
        problems.append(f"start line: {start!r}")
    headers: dict[str, list[str]] = {}
    for line in _unfolded(lines[1:]):
        match = _HEADER_LINE.match(line)
        if match is None:
            problems.append(f"not a header line: {line!r}")
            continue
        name = match.group("name").lower()
        headers.setdefault(_COMPACT.get(name, name), []).append(match.group("value").strip())

    for name in _SINGLE_VALUE:
        if len(headers.get(name, ())) > 1:
            problems.append(f"{name} appears {len(headers[name])} times")
    for name in ("via", "from", "to", "call-id", "cseq", "content-length"):
        if name not in headers:
            problems.append(f"{name} missing")

    for value in (v.strip() for hf in headers.get("via", ()) for v in hf.split(",")):
        via = _VIA.match(value)
        branch = _BRANCH.search(via.group("params")) if via else None
        if via is None:
            problems.append(f"via: {value!r}")
        elif branch is None or not branch.group("value").startswith("z9hG4bK"):
            problems.append(f"via without a z9hG4bK branch: {value!r}")
    for name in ("from", "to"):
        for value in headers.get(name, ()):
            address = _ADDRESS.match(value)
            if address is None:
                problems.append(f"{name}: {value!r}")
            elif (name == "from" or (status is not None and status.group("code") != "100")) and not _TAG.search(
                    address.group("params")):
                problems.append(f"{name} without a tag: {value!r}")
    for value in headers.get("contact", ()):
        if _CONTACT.match(value) is None:
            problems.append(f"contact is not '<uri>' without a display name: {value!r}")
    for value in headers.get("call-id", ()):
        if _CALL_ID.match(value) is None:
            problems.append(f"call-id: {value!r}")

    cseq_method = None
    for value in headers.get("cseq", ()):
        cseq = _CSEQ.match(value)
        if cseq is None or int(cseq.group("number")) >= 2**31:
            problems.append(f"cseq: {value!r}")
        else:
            cseq_method = cseq.group("method")
    method = request.group("method") if request is not None else None if status is not None else start.split(" ")[0]
    if method is not None:
        if cseq_method is not None and cseq_method != method:
            problems.append(f"cseq method {cseq_method} in a {method}")
        forwards = headers.get("max-forwards", [])
        if not forwards:
            problems.append("max-forwards missing in a request")
        elif not (forwards[0].isdigit() and int(forwards[0]) <= 255):
            problems.append(f"max-forwards: {forwards[0]!r}")
    opens_dialog = method == "INVITE" or (
        status is not None and cseq_method == "INVITE" and 101 <= int(status.group("code")) <= 299)
    if opens_dialog and len(headers.get("contact", ())) != 1:
        problems.append(f"{len(headers.get('contact', ()))} Contact headers where exactly one is required")

    body_bytes = size - len(head.encode()) - len(b"\r\n\r\n")
    for value in headers.get("content-length", ()):
        if not value.isdigit():
            problems.append(f"content-length: {value!r}")
        elif int(value) != body_bytes:
            problems.append(f"content-length {value} for a body of {body_bytes} bytes")
    if body_bytes > 0 and "content-type" not in headers:
        problems.append("a body without content-type")
    return problems


def _unfolded(lines: list[str]) -> list[str]:
    """Header lines with folded continuations (leading whitespace) joined to their header."""
    joined: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and joined:
            joined[-1] += " " + line.strip()
        else:
            joined.append(line)
    return joined
