"""Cheaper parsing, reading, copying and rendering of sippy's SIP messages: the same objects and the
same bytes, in fewer Python steps (issue 15: the edge's Python per SIP message).

Reads: the sippy package (imported lazily). Writes: replaces a few methods of
sippy's SipMsg, SipHeader, SipURL and SipAddress in place, once per process, from
`patches.apply_patches()`.

Why: every datagram the edge handles goes through sippy's pure-Python message objects: ~20 per
queued call, each parsed (one SipHeader and one body object per header line), read (getHFBody and
friends build a list of every matching header for each lookup), copied (a response copies the
request's Via/From/To/Call-ID/CSeq, and UA.sendUasResponse copies the whole response again) and
rendered (SipURL.localStr: a nested function, a params list, urllib's quote of the user part).
`bench/sip_message_costs.py` times each step per message of a real call. Each replacement below
keeps its sippy original's result (same attributes, same text, same exceptions); only the way
there is shorter. The replaced originals are kept in `ORIGINALS` for the cases a fast path leaves
to them.
"""

from __future__ import annotations

from typing import Any

ORIGINALS: dict[str, Any] = {}
# distinct user parts whose %-quoted form is kept (peers choose them: bounded)
QUOTED_USERS_KEPT = 4096


def apply() -> None:
    """Install the cheaper methods. Call once, from `apply_patches()`, before any message exists."""
    _headers_built_in_one_step()
    _messages_split_in_one_pass()
    _headers_looked_up_without_lists()
    _urls_and_addresses_copied_directly()
    _urls_rendered_in_one_pass()
    _messages_rendered_with_one_join()


# ------------------------------------------------------------------------------------- parsing
def _headers_built_in_one_step() -> None:
    # SipHeader.__init__ split "Name: value" with a list comprehension (a function call of its own)
    # and looked the body class up through two nested try blocks: ~1 µs of each header line's ~3.
    # The same: the name lower-cased, the body class from sippy's table (SipGenericHF for names it
    # has none for, also when the class itself raised KeyError), ESipHeaderCSV given the name, and a
    # line without a colon still raises ValueError.
    from sippy.ESipHeaderCSV import ESipHeaderCSV
    from sippy.SipGenericHF import SipGenericHF
    from sippy.SipHeader import SipHeader, hf_types

    ORIGINALS["SipHeader.__init__"] = SipHeader.__init__

    def init(self: Any, s: Any = None, name: Any = None, body: Any = None, bodys: Any = None,
             fixname: bool = False) -> None:
        if s is not None:
            head, colon, rest = s.partition(":")
            if not colon:
                raise ValueError("not enough values to unpack (expected 2, got 1)")
            name, bodys = head.strip(), rest.strip()
        if name is not None:
            self.name = name = name.lower()
        else:
            name = self.name
        if body is None:
            try:
                try:
                    body = hf_types[name](bodys)
                except KeyError:
                    body = SipGenericHF(bodys, name)
            except ESipHeaderCSV as csv:
                csv.name = name
                raise csv
        self.body = body
        if name is None or fixname:
            self.name = body.hf_names[0]

    SipHeader.__init__ = init


def _messages_split_in_one_pass() -> None:
    # SipMsg.__init__ unfolded continuation lines with a while loop that deleted from the list it
    # walked (len() and two index operations per line), kept a second list of names for the four
    # required-header checks, and built each header through SipHeader's constructor. Same body split
    # (the first of CRLFCRLF, CRCR, LFLF), the same folding (from the second header line on, an
    # empty or blank-led line joins the line before it with one space), the same headers (class,
    # name, body) in the same order, the same exceptions.
    from sippy.ESipHeaderCSV import ESipHeaderCSV
    from sippy.ESipHeaderIgnore import ESipHeaderIgnore
    from sippy.SipGenericHF import SipGenericHF as generic
    from sippy.SipHeader import SipHeader, hf_types
    from sippy.SipMsg import SipMsg

    ORIGINALS["SipMsg.__init__"] = SipMsg.__init__
    new = object.__new__
    required = (("via", "Via HF is missed"), ("to", "To HF is missed"), ("from", "From HF is missed"),
                ("cseq", "CSeq HF is missed"))

    def init(self: Any, buf: Any = None) -> None:
        self.headers = headers = []
        if buf is None:
            return
        mbody = None
        for delimiter in ("\r\n\r\n", "\r\r", "\n\n"):
            at = buf.find(delimiter)
            if at != -1:
                mbody = buf[at + len(delimiter):] or None
                buf = buf[:at]
                break
        self._SipMsg__mbody = mbody
        lines = buf.splitlines()
        self.setSL(lines[0])
        unfolded = lines[1:2]
        for line in lines[2:]:
            if not line or line[0] in " \t":
                unfolded[-1] += " " + line.strip()
            else:
                unfolded.append(line)
        content_type = content_length = None
        names = set()
        for line in unfolded:
            # SipHeader(line, fixname=True), written out: no constructor call per line
            head, colon, rest = line.partition(":")
            if not colon:
                raise ValueError("not enough values to unpack (expected 2, got 1)")
            name = head.strip().lower()
            try:
                try:
                    body = hf_types[name](rest.strip())
                except KeyError:
                    body = generic(rest.strip(), name)
            except ESipHeaderCSV as csv:
                found = [SipHeader(name=name, bodys=value, fixname=True) for value in csv.bodys]
            except ESipHeaderIgnore:
                continue
            else:
                header = new(SipHeader)
                header.name, header.body = body.hf_names[0], body
                found = [header]
            for header in found:
                name = header.name
                if name == "content-type":
                    content_type = header
                elif name == "content-length":
                    content_length = header
                else:
                    headers.append(header)
                    names.add(name)
        self._SipMsg__content_type, self._SipMsg__content_length = content_type, content_length
        for name, error in required:
            if name not in names:
                raise Exception(error)   # sippy's exception, as sippy raises it

    SipMsg.__init__ = init


# ------------------------------------------------------------------------------------- reading
def _headers_looked_up_without_lists() -> None:
    # getHFBody / getHF / getHFBCopy / countHFs built the list of every header of that name to take
    # one: sippy's UA and transaction manager and the edge call them a few dozen times per message.
    # The same header (the idx-th of that name), the same IndexError when there is none; a negative
    # idx goes to sippy's own.
    from sippy.SipMsg import SipMsg

    original_body = ORIGINALS["SipMsg.getHFBody"] = SipMsg.getHFBody
    original_copy = ORIGINALS["SipMsg.getHFBCopy"] = SipMsg.getHFBCopy
    ORIGINALS["SipMsg.getHF"], ORIGINALS["SipMsg.countHFs"] = SipMsg.getHF, SipMsg.countHFs

    def nth(msg: Any, name: str, idx: int) -> Any:
        for header in msg.headers:
            if header.name == name:
                if not idx:
                    return header
                idx -= 1
        raise IndexError("list index out of range")

    def get_hf_body(self: Any, name: str, idx: int = 0) -> Any:
        if idx < 0:
            return original_body(self, name, idx)
        return nth(self, name, idx).getBody()

    def get_hf_bcopy(self: Any, name: str, idx: int = 0) -> Any:
        if idx < 0:
            return original_copy(self, name, idx)
        return nth(self, name, idx).getBCopy()

    def get_hf(self: Any, name: str) -> Any:
        return nth(self, name, 0)

    def count_hfs(self: Any, name: str) -> int:
        n = 0
        for header in self.headers:
            if header.name == name:
                n += 1
        return n

    SipMsg.getHFBody, SipMsg.getHFBCopy, SipMsg.getHF, SipMsg.countHFs = get_hf_body, get_hf_bcopy, get_hf, count_hfs


# ------------------------------------------------------------------------------------- copying
def _urls_and_addresses_copied_directly() -> None:
    # A copy went through each class's keyword constructor (SipURL's has 17 parameters) for a few
    # attribute assignments. The same attributes, set directly: a SipURL copy is what sippy's
    # SipURL(...) of the copied fields makes (scheme "sip", no original_uri, fresh `other` and
    # `userparams` lists, the shared `headers` dict, the local placeholders for a missing host), a
    # SipAddress copy has fresh params / params_order, a SipHeader copy the same class and name
    # over a copy of its body.
    from sippy.SipAddress import SipAddress
    from sippy.SipConf import SipConf
    from sippy.SipHeader import SipHeader
    from sippy.SipURL import SipURL

    ORIGINALS["SipURL.getCopy"] = SipURL.getCopy
    ORIGINALS["SipAddress.getCopy"] = SipAddress.getCopy
    original_header_copy = ORIGINALS["SipHeader.getCopy"] = SipHeader.getCopy
    new = object.__new__

    def url_copy(self: Any) -> Any:
        url = new(SipURL)
        url.original_uri = None
        url.other = list(self.other)
        url.userparams = list(self.userparams)
        url.scheme = "sip"
        url.username, url.password = self.username, self.password
        if self.host is None:
            url.host, url.port, url.transport = SipConf.my_address, SipConf.my_port, SipConf.my_transport
        else:
            url.host, url.port, url.transport = self.host, self.port, self.transport
        url.headers, url.usertype, url.ttl, url.maddr = self.headers, self.usertype, self.ttl, self.maddr
        url.method, url.tag, url.lr = self.method, self.tag, self.lr
        return url

    def address_copy(self: Any) -> Any:
        address = new(SipAddress)
        address.name = self.name
        address.url = self.url.getCopy()
        address.params = self.params.copy()
        address.params_order = self.params_order[:]
        address.hadbrace = True if self.hadbrace is None else self.hadbrace
        return address

    def header_copy(self: Any) -> Any:
        if self.name is None:
            return original_header_copy(self)
        header = new(self.__class__)
        header.name = self.name.lower()
        header.body = self.body.getCopy()
        return header

    SipURL.getCopy, SipAddress.getCopy, SipHeader.getCopy = url_copy, address_copy, header_copy


# ------------------------------------------------------------------------------------ rendering
def _urls_rendered_in_one_pass() -> None:
    # SipURL.localStr defined a function per call, built the parameters through getParams() (a
    # getattr per name) and %-quoted the user part with urllib (~1.5 µs) every time. The same text:
    # the quoted form of each user part is kept (bounded), the parameters are written in sippy's
    # order (user, transport, ttl, maddr, method, tag, the others, lr), the local placeholders
    # (host, port, transport) are replaced as sippy does, the port written when SipConf.port_needed.
    from urllib.parse import quote

    from sippy.SipConf import SipConf
    from sippy.SipURL import USERNAME_SAFE, SipURL

    ORIGINALS["SipURL.localStr"] = SipURL.localStr
    quoted: dict[str, str] = {}
    port_needed = SipConf.port_needed

    def local_str(self: Any, local_addr: Any = None) -> str:
        if local_addr is not None:
            (host_here, port_here), transport_here = local_addr
        else:
            host_here = port_here = transport_here = None
        out = [self.scheme, ":"]
        username = self.username
        if username is not None:
            user = quoted.get(username)
            if user is None:
                user = quote(username, USERNAME_SAFE)
                if len(quoted) < QUOTED_USERS_KEPT:
                    quoted[username] = user
            out.append(user)
            for param in self.userparams:
                out.append(f";{param}")
            if self.password is not None:
                out.append(f":{self.password}")
            out.append("@")
        host = self.host
        out.append(host_here if host_here is not None and hasattr(host, "my") else str(host))
        port, transport = self.port, self.transport
        if port is not None:
            if port_here is not None and hasattr(port, "my"):
                if port_needed(port_here, transport, transport_here):
                    out.append(":%d" % port_here)  # noqa: UP031 - sippy's %d, as it formats a port
            elif port_needed(port, transport, transport_here):
                out.append(":%d" % port)  # noqa: UP031 - a placeholder port formats through %d
        if self.usertype is not None:
            out.append(f";user={self.usertype}")
        if transport is not None:
            if hasattr(transport, "my"):
                if transport_here not in (None, SipConf.default_transport):
                    out.append(f";transport={transport_here}")
            else:
                out.append(f";transport={transport}")
        for name, value in (("ttl", self.ttl), ("maddr", self.maddr), ("method", self.method), ("tag", self.tag)):
            if value is not None:
                out.append(f";{name}={value}")
        for param in self.other:
            out.append(f";{param}")
        if self.lr:
            out.append(";lr")
        if self.headers:
            out.append("?")
            out.append("&".join([f"{name}={quote(value)}" for name, value in self.headers.items()]))
        return "".join(out)

    SipURL.localStr = local_str


def _messages_rendered_with_one_join() -> None:
    # SipMsg.localStr grew the message string by `+=` once per header line. The same text, one join.
    from sippy.SipMsg import SipMsg

    ORIGINALS["SipMsg.localStr"] = SipMsg.localStr

    def local_str(self: Any, local_addr: Any = None, compact: bool = False) -> str:
        out = [self.getSL(local_addr)]
        out += [header.localStr(local_addr, compact) for header in self.headers]
        body = self.body
        if body is not None:
            text = body.localStr(local_addr)
            if compact:
                out.append(f"c: {body.mtype}")
                out.append(f"l: {len(text)}\r\n")
            else:
                out.append(f"Content-Type: {body.mtype}")
                out.append(f"Content-Length: {len(text)}\r\n")
            out.append(text)
        else:
            out.append("l: 0\r\n\r\n" if compact else "Content-Length: 0\r\n\r\n")
        return "\r\n".join(out)

    SipMsg.localStr = local_str
