"""Bad input on the edge's TCP and TLS transports (`sippy/streams.py`) beside a real SIPp call:
slowloris connections (a message started and never finished, over TCP and TLS), a TLS handshake
that never finishes, an oversize frame, garbage before a start line, more connections from one
source than allowed. Each is closed within its bound and logged (rate limited, per cause), and
the call completes; a call afterwards completes too.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest_asyncio
from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher, expect_success
from stream_harness import Certificates, connect, read_until_closed, running_edge, start_stream_sipp, stream_options

LIMITS = {"message_timeout_s": 1.0, "handshake_timeout_s": 1.0, "idle_timeout_s": 30.0,
          "max_message_bytes": 4096, "max_connections_per_source": 6}
# a connection the edge should close is closed within its timeout, the sweep's half second and slack
CLOSED_WITHIN_S = 5.0


@pytest_asyncio.fixture
async def edge(certs: Certificates, logs: list[dict[str, object]]) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(stream_options(certs, **LIMITS)) as edge:
        yield edge


def _connect(port: int, certs: Certificates | None = None) -> socket.socket:
    return connect(port, certs, timeout_s=CLOSED_WITHIN_S)


def _closed_by_edge(sock: socket.socket) -> bool:
    """Read until the edge closes the connection (True) or the bound passes (False)."""
    return read_until_closed(sock)[0]


def _answers_keepalive(sock: socket.socket) -> bool:
    sock.sendall(b"\r\n\r\n")
    try:
        return sock.recv(16) == b"\r\n"
    except OSError:
        return False


def _partial(port: int) -> bytes:
    return (f"INVITE sip:support@{LOOPBACK}:{port} SIP/2.0\r\nVia: SIP/2.0/TCP {LOOPBACK}:9;branch=z9hG4bKslow\r\n"
            "From: <sip:slow@127.0.0.1>;tag=1\r\n").encode()


def _hostile(ports: dict[str, int], certs: Certificates) -> dict[str, bool]:
    """Open every hostile connection, then see which the edge closed (in a thread: blocking I/O)."""
    slow_tcp = _connect(ports["tcp"])
    slow_tcp.sendall(_partial(ports["tcp"]))
    slow_tls = _connect(ports["tls"], certs)
    slow_tls.sendall(_partial(ports["tls"]))
    no_handshake = _connect(ports["tls"])          # TCP to the TLS port, never a ClientHello
    oversize = _connect(ports["tcp"])
    oversize.sendall(_partial(ports["tcp"]) + b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
    garbage = _connect(ports["tcp"])
    garbage.sendall(b"\x16\x03\x01\x02\x00garbage before any start line\r\n")
    return {name: _closed_by_edge(sock) for name, sock in [
        ("slow_tcp", slow_tcp), ("slow_tls", slow_tls), ("no_handshake", no_handshake),
        ("oversize", oversize), ("garbage", garbage)]}


def _over_the_limit(port: int) -> tuple[bool, bool, bool]:
    """As many connections as one source may have are served; one more is closed; once they are
    gone a new one is served again."""
    held = [_connect(port) for _ in range(LIMITS["max_connections_per_source"])]
    try:
        served = all(_answers_keepalive(sock) for sock in held)
        refused = _closed_by_edge(_connect(port))
    finally:
        for sock in held:
            sock.close()
    for _ in range(50):
        again = _connect(port)
        if _answers_keepalive(again):
            again.close()
            return served, refused, True
        again.close()
    return served, refused, False


async def test_hostile_connections_are_bounded_and_calls_go_on(edge: EdgeUnderTest, sipp: SippLauncher,
                                                               certs: Certificates,
                                                               logs: list[dict[str, object]]) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    ports = stack.stream_ports

    def call(name: str) -> tuple[object, object]:
        agent = start_stream_sipp(sipp, "agent_early_uas", "tcp", certs, name=f"agent-{name}")
        dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
        caller = start_stream_sipp(sipp, "caller_answered_bye", "tcp", certs, name=f"caller-{name}",
                                   remote_port=ports["tcp"], service="support", pause_ms=3000)
        return caller, agent

    caller, agent = call("beside")
    closed = await asyncio.to_thread(_hostile, ports, certs)
    await expect_success(caller, agent)  # type: ignore[arg-type]
    assert closed == {"slow_tcp": True, "slow_tls": True, "no_handshake": True, "oversize": True, "garbage": True}

    served, refused, served_again = await asyncio.to_thread(_over_the_limit, ports["tcp"])
    assert (served, refused, served_again) == (True, True, True)

    caller, agent = call("after")
    await expect_success(caller, agent)  # type: ignore[arg-type]
    assert stack.active_calls() == 0

    causes = {str(r.get("reason")) for r in logs if r.get("event") == "sip.stream_closed"}
    assert {"message_timeout", "handshake_timeout", "oversize", "garbage"} <= causes, str(
        [r for r in logs if "stream" in str(r.get("event"))])
    assert any(r.get("event") == "sip.stream_refused" for r in logs)
