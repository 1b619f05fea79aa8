"""Fixtures for the SIP edge tests: free UDP ports, SIPp launcher, a running edge + scripted dispatcher.

Reads/writes nothing itself; the helpers live in sip_harness.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sip_harness import (
    LOOPBACK,
    SIPP_INSTALLED,
    EdgeUnderTest,
    ScriptedDispatcher,
    SippLauncher,
    free_udp_port,
    started_stack,
)
from stream_harness import Certificates, make_certificates
from structlog.testing import capture_logs

from callcenter_sip_edge.sip_stack import SipStack

if not SIPP_INSTALLED:  # pragma: no cover - environment guard
    pytest.skip("sipp is not installed (apt-get install sip-tester)", allow_module_level=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throw-away CA and a certificate for 127.0.0.1 signed by it, once per test module (TCP, TLS
    and WebSocket tests)."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    """The structlog events logged during the test."""
    with capture_logs() as records:
        yield records


@pytest.fixture
def udp_port() -> Callable[[], int]:
    """Factory of free UDP ports on 127.0.0.1 (never 5060)."""
    return free_udp_port


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippLauncher]:
    """Starts bounded SIPp processes; any still running at the end of the test is terminated."""
    launcher = SippLauncher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest_asyncio.fixture
async def edge() -> AsyncIterator[EdgeUnderTest]:
    """A SipStack on a free loopback port whose facts go to a ScriptedDispatcher."""
    dispatcher = ScriptedDispatcher()
    stack, port = started_stack(dispatcher)
    try:
        yield EdgeUnderTest(stack=stack, dispatcher=dispatcher, port=port)
    finally:
        started = time.monotonic()
        stack.stop()
        assert time.monotonic() - started < 5, "SipStack.stop() took too long"


@pytest_asyncio.fixture
async def make_edge() -> AsyncIterator[Callable[..., EdgeUnderTest]]:
    """Starts SipStacks with the given options (trusted_networks, invite_rate, priority_networks, ...),
    each with its own ScriptedDispatcher; all are stopped at the end of the test."""
    stacks: list[SipStack] = []

    def start(**options: Any) -> EdgeUnderTest:
        dispatcher = ScriptedDispatcher()
        stack, port = started_stack(dispatcher, **options)
        stacks.append(stack)
        return EdgeUnderTest(stack=stack, dispatcher=dispatcher, port=port)

    yield start
    for stack in stacks:
        stack.stop()


@pytest.fixture
def client() -> Iterator[socket.socket]:
    """A raw UDP socket on loopback, for hand-made (and malformed) SIP datagrams."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()
