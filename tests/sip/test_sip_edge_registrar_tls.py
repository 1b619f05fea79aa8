"""A phone that registers over TLS is rung back over its own TLS connection: the binding records
transport tls and the connection's source address, the INVITE comes down that connection (the
phone listens nowhere else), and its answer goes back up it. Real TLS (a throw-away CA), a real
redis-server, SIPp as the caller and the queue media."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
import redis.asyncio as aioredis
from registrar_harness import DOMAIN, provision, registrations
from sip_harness import LOOPBACK, EdgeUnderTest, ScriptedDispatcher, SippLauncher, expect_success
from stream_harness import make_certificates, stream_options

from callcenter.contract.commands import Ring
from callcenter.store import Store
from callcenter_dev.register_client import RegisterClient, digest_field, parse_response
from callcenter_sip_edge.registrar import RegistrarOptions, RegistrarSetup
from callcenter_sip_edge.registrations import Registrations
from callcenter_sip_edge.sip_stack import SipStack

PASSWORD = "tls-phone-pass"


class TlsPhone:
    """One TLS connection to the edge, as a phone behind NAT keeps it: REGISTER up, INVITE down."""

    def __init__(self, port: int, ca: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        raw = socket.create_connection((LOOPBACK, port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname=LOOPBACK)
        self.local = self.sock.getsockname()[1]
        self.buffer = b""
        self.call_id, self.cseq = uuid.uuid4().hex, 0

    def register(self, authorization: str | None = None) -> bytes:
        self.cseq += 1
        lines = [f"REGISTER sip:{DOMAIN} SIP/2.0",
                 f"Via: SIP/2.0/TLS {LOOPBACK}:{self.local};branch=z9hG4bK{uuid.uuid4().hex}",
                 f"From: <sip:a1@{DOMAIN}>;tag=t1", f"To: <sip:a1@{DOMAIN}>", f"Call-ID: {self.call_id}",
                 f"CSeq: {self.cseq} REGISTER", "Contact: <sip:a1@10.20.30.40:5061;transport=tls>",
                 "Expires: 300", "Max-Forwards: 70"]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_message(self) -> str:
        """The next message on the connection (framed by Content-Length)."""
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if sep:
                match = re.search(rb"\r\nContent-Length:\s*(\d+)", head, re.IGNORECASE)
                length = int(match.group(1)) if match else 0
                if len(rest) >= length:
                    self.buffer = rest[length:]
                    return (head + sep + rest[:length]).decode(errors="replace")
            chunk = self.sock.recv(65535)
            assert chunk, "the edge closed the connection"
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


@pytest_asyncio.fixture
async def tls_registrar(redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[tuple[EdgeUnderTest, Registrations,
                                                                                       Path]]:
    certs = make_certificates(tmp_path / "certs")
    options = RegistrarOptions(domains=frozenset({DOMAIN}), algorithms=("SHA-256", "MD5"))
    regs = registrations(redis, options)
    dispatcher = ScriptedDispatcher()
    stack = SipStack(host=LOOPBACK, port=0, on_fact=dispatcher.on_fact, loop=asyncio.get_running_loop(),
                     streams=stream_options(certs), registrar=RegistrarSetup(options, regs.nonces, regs.submit))
    stack.start()
    assert stack.bound_address is not None
    await provision(Store(redis, "reg"), "a1", PASSWORD)
    try:
        yield EdgeUnderTest(stack=stack, dispatcher=dispatcher, port=stack.bound_address[1]), regs, certs.ca
    finally:
        stack.stop()


async def test_a_tls_phone_is_rung_over_its_own_connection(tls_registrar: tuple[EdgeUnderTest, Registrations, Path],
                                                           sipp: SippLauncher) -> None:
    edge, regs, ca = tls_registrar
    stack, dispatcher = edge.stack, edge.dispatcher
    phone = await asyncio.to_thread(TlsPhone, stack.stream_ports["tls"], ca)
    helper = RegisterClient(edge.port, "a1", PASSWORD, domain=DOMAIN)   # computes the digest only
    try:
        await asyncio.to_thread(phone.send, phone.register())
        challenge = parse_response((await asyncio.to_thread(phone.read_message)).encode())
        assert challenge.code == 401
        sha = next(c for c in challenge.all("WWW-Authenticate") if "SHA-256" in c)
        await asyncio.to_thread(phone.send, phone.register(helper.authorization(sha)))
        ok = parse_response((await asyncio.to_thread(phone.read_message)).encode())
        assert ok.code == 200, ok
        assert digest_field(sha, "realm") == "callcenter"
        [binding] = await regs.bindings("a1") or []
        assert (binding.transport, binding.received) == ("tls", f"127.0.0.1:{phone.local}")
        target = binding.target()
        assert target == f"sip:a1@127.0.0.1:{phone.local};transport=tls"

        music = sipp.start("media_hold_uas", name="queue-music")
        dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
        dispatcher.on("media_answered", lambda f: stack.ring_registered(
            Ring(call_id=f.call_id, offer_id="o1", agent_id="a1", uri=f"sip:a1@{DOMAIN}", timeout_s=10.0), [target]))
        caller = sipp.start("caller_answered_bye", name="caller", remote_port=edge.port, service="support",
                            pause_ms=2000)
        invite = await asyncio.to_thread(phone.read_message)
        assert invite.startswith(f"INVITE {target} SIP/2.0"), invite[:300]
        assert "Via: SIP/2.0/TLS" in invite
        # busy: the answer goes back up the same connection
        head = dict(line.split(": ", 1) for line in invite.split("\r\n\r\n")[0].split("\r\n")[1:] if ": " in line)
        busy = "\r\n".join(["SIP/2.0 486 Busy Here", f"Via: {head['Via']}", f"From: {head['From']}",
                            f"To: {head['To']};tag=busy1", f"Call-ID: {head['Call-ID']}", f"CSeq: {head['CSeq']}",
                            "Content-Length: 0", "", ""])
        await asyncio.to_thread(phone.send, busy.encode())
        failed = await dispatcher.wait_for("agent_failed")
        assert (failed.data["reason"], failed.data["code"]) == ("busy", 486)
        ack = await asyncio.to_thread(phone.read_message)
        assert ack.startswith("ACK "), ack[:200]
        await expect_success(caller, music)   # the caller stays on its media, then hangs up
    finally:
        helper.close()
        phone.close()
