"""An edge with its registrar on a real redis-server, SIPp REGISTER runs with credentials, and a
hand-written REGISTER client over UDP (for what SIPp cannot do: SHA-256, replays, floods).

Reads: tests/sipp/register_*.xml. Writes: SIPp traces under the test's directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sip_harness import LOOPBACK, SCENARIOS, SippProcess, free_udp_port, sipp_command

from callcenter.sip_credentials import credentials
from callcenter.store import Store
from callcenter_sip_edge.digest import Nonces
from callcenter_sip_edge.registrations import Registrations

DOMAIN = "callcenter.test"
REALM = "callcenter"
TENANT = "reg"


async def provision(store: Store, agent_id: str, password: str, *, registration_required: bool = False,
                    uri: str | None = None) -> None:
    """An agent whose URI is its AOR, with a SIP password (as the api stores it: HA1s only)."""
    await store.agent_upsert(agent_id, uri or f"sip:{agent_id}@{DOMAIN}", ["sales"], None)
    await store.redis.hset(store.keys.sip_auth(agent_id), mapping={
        **credentials(agent_id, REALM, password), "registration_required": "1" if registration_required else "0"})


def start_register(workdir: Path, scenario: str, edge_port: int, agent_id: str, password: str, *,
                   expires: int = 120, keys: dict[str, str] | None = None, port: int | None = None) -> SippProcess:
    """SIPp running tests/sipp/<scenario>.xml once against the edge, with -au/-ap credentials."""
    port = port or free_udp_port()
    run_dir = workdir / f"sipp-{scenario}-{agent_id}-{port}"
    run_dir.mkdir(parents=True, exist_ok=True)
    options = ["-sf", str(SCENARIOS / f"{scenario}.xml"), "-au", agent_id, "-ap", password,
               "-key", "expires", str(expires)]
    for name, value in (keys or {}).items():
        options += ["-key", name, value]
    cmd = sipp_command(options, port, service=agent_id, pause_ms=None, remote_port=edge_port)
    proc = subprocess.Popen(cmd, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return SippProcess(name=scenario, port=port, workdir=run_dir, proc=proc)


@dataclass
class Response:
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

    def __init__(self, edge_port: int, agent_id: str, password: str) -> None:
        self.edge = (LOOPBACK, edge_port)
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
                contact: str | None = None) -> bytes:
        self.cseq += 1
        contact = contact or f"<sip:{self.agent_id}@{LOOPBACK}:{self.port}>"
        lines = [f"REGISTER sip:{DOMAIN} SIP/2.0",
                 f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
                 f"From: <sip:{self.agent_id}@{DOMAIN}>;tag={self.call_id[:8]}",
                 f"To: <sip:{self.agent_id}@{DOMAIN}>", f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} REGISTER",
                 f"Contact: {contact}", f"Expires: {expires}", "Max-Forwards: 70"]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()

    async def send(self, data: bytes) -> Response:
        await asyncio.to_thread(self.sock.sendto, data, self.edge)
        reply, _ = await asyncio.to_thread(self.sock.recvfrom, 65535)
        return parse_response(reply)

    def authorization(self, challenge: str, *, nc: int = 1, password: str | None = None,
                      algorithm: str | None = None) -> str:
        algorithm = algorithm or digest_field(challenge, "algorithm") or "MD5"
        h = {"MD5": lambda s: hashlib.md5(s.encode()).hexdigest(),
             "SHA-256": lambda s: hashlib.sha256(s.encode()).hexdigest()}[algorithm]
        realm, nonce = digest_field(challenge, "realm"), digest_field(challenge, "nonce")
        uri, cnonce, count = f"sip:{DOMAIN}", uuid.uuid4().hex[:12], f"{nc:08x}"
        ha1 = h(f"{self.agent_id}:{realm}:{password or self.password}")
        response = h(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{h(f'REGISTER:{uri}')}")
        return (f'Digest username="{self.agent_id}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{response}", algorithm={algorithm}, qop=auth, nc={count}, cnonce="{cnonce}"')

    async def register(self, *, expires: int = 120, algorithm: str = "SHA-256",
                       password: str | None = None) -> Response:
        """Challenge, then credentials for the challenge of `algorithm`; the final response."""
        first = await self.send(self.request(expires=expires))
        assert first.code == 401, first
        challenge = next(c for c in first.all("WWW-Authenticate") if f"algorithm={algorithm}" in c)
        return await self.send(self.request(expires=expires, authorization=self.authorization(
            challenge, password=password)))


def registrations(redis: object, options: object, nonces: Nonces | None = None) -> Registrations:
    from callcenter_sip_edge.registrar import RegistrarOptions

    assert isinstance(options, RegistrarOptions)
    return Registrations(redis, TENANT, "edge-reg", options,  # type: ignore[arg-type]
                         nonces or Nonces(options.nonce_secret, options.nonce_ttl_s))
