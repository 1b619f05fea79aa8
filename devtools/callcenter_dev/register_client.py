"""A minimal SIP REGISTER client over UDP with digest credentials (MD5, SHA-256), for tests and
benchmarks: it plays a phone that registers an agent's AOR at a sip-edge, from its own loopback port.

Reads: the edge's responses. Writes: REGISTER requests. Dev-only (not in the image).
"""

from __future__ import annotations

import hashlib
import re
import socket
import uuid
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"


@dataclass
class Response:
    """A final response as the client read it: status, phrase, headers in order."""

    code: int
    phrase: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def first(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None


def parse_response(data: bytes) -> Response:
    head = data.decode(errors="replace").split("\r\n\r\n", 1)[0].split("\r\n")
    _, code, phrase = head[0].split(" ", 2)
    headers = []
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Response(int(code), phrase, headers)


def digest_field(challenge: str, name: str) -> str | None:
    match = re.search(rf'{name}="?([^",]*)"?', challenge)
    return match.group(1) if match else None


class RegisterClient:
    """A UDP REGISTER client on its own loopback port (a phone as far as the edge can tell)."""

    def __init__(self, edge_port: int, agent_id: str, password: str, domain: str = "callcenter.test") -> None:
        self.edge = (LOOPBACK, edge_port)
        self.domain = domain
        self.agent_id = agent_id
        self.password = password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(3.0)
        self.port = self.sock.getsockname()[1]
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, *, expires: int = 120, authorization: str | None = None,
                contact: str | None = None, path: tuple[str, ...] = ()) -> bytes:
        self.cseq += 1
        contact = contact or f"<sip:{self.agent_id}@{LOOPBACK}:{self.port}>"
        lines = [f"REGISTER sip:{self.domain} SIP/2.0",
                 f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
                 f"From: <sip:{self.agent_id}@{self.domain}>;tag={self.call_id[:8]}",
                 f"To: <sip:{self.agent_id}@{self.domain}>", f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} REGISTER",
                 f"Contact: {contact}", f"Expires: {expires}", "Max-Forwards: 70"]
        lines += [f"Path: {hop}" for hop in path]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()

    def send(self, data: bytes) -> Response:
        return self.exchange(data)

    def exchange(self, data: bytes) -> Response:
        """Send one request and read the next datagram back (the client's only transaction)."""
        self.sock.sendto(data, self.edge)
        reply, _ = self.sock.recvfrom(65535)
        return parse_response(reply)

    def authorization(self, challenge: str, *, nc: int = 1, password: str | None = None,
                      algorithm: str | None = None) -> str:
        algorithm = algorithm or digest_field(challenge, "algorithm") or "MD5"
        name = "md5" if algorithm == "MD5" else "sha256"

        def h(text: str) -> str:
            return hashlib.new(name, text.encode()).hexdigest()

        realm, nonce = digest_field(challenge, "realm"), digest_field(challenge, "nonce")
        uri, cnonce, count = f"sip:{self.domain}", uuid.uuid4().hex[:12], f"{nc:08x}"
        ha1 = h(f"{self.agent_id}:{realm}:{password or self.password}")
        response = h(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{h(f'REGISTER:{uri}')}")
        return (f'Digest username="{self.agent_id}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{response}", algorithm={algorithm}, qop=auth, nc={count}, cnonce="{cnonce}"')

    def register(self, *, expires: int = 120, algorithm: str = "SHA-256", password: str | None = None,
                 contact: str | None = None, path: tuple[str, ...] = ()) -> Response:
        """Challenge, then credentials for the challenge of `algorithm`; the final response (or the
        first one when it is no challenge)."""
        first = self.exchange(self.request(expires=expires, contact=contact, path=path))
        if first.code != 401:
            return first
        challenge = next(c for c in first.all("WWW-Authenticate") if f"algorithm={algorithm}" in c)
        return self.exchange(self.request(expires=expires, contact=contact, path=path,
                                          authorization=self.authorization(challenge, password=password)))
