"""Bad input on the edge's WebSocket transports (`sippy/websocket.py`) beside a real SIPp call:
an Upgrade that never finishes (slowloris), a TLS handshake on the wss port that never starts,
garbage before the Upgrade, an Upgrade without the `sip` subprotocol or from a foreign Origin, an
oversize frame, a message whose last fragment never comes, more connections from one source than
allowed. Each is answered or closed within its bound and logged (per cause), the call completes,
and a well-behaved WebSocket client is served (ping/pong, an OPTIONS answered on its connection).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest_asyncio
from browser_harness import ws_options
from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher, expect_success
from stream_harness import Certificates, connect, read_until_closed, running_edge
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, RejectConnection, Request, TextMessage

LIMITS = {"message_timeout_s": 1.0, "handshake_timeout_s": 1.0, "ws_handshake_timeout_s": 1.0,
          "idle_timeout_s": 30.0, "max_message_bytes": 4096, "max_connections_per_source": 6}
ORIGIN = "https://agents.example.com"
CLOSED_WITHIN_S = 5.0


@pytest_asyncio.fixture
async def edge(certs: Certificates, logs: list[dict[str, object]]) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(ws_options(certs, ws_allowed_origins=(ORIGIN,), **LIMITS)) as edge:  # type: ignore[arg-type]
        yield edge


def _connect(port: int, certs: Certificates | None = None) -> socket.socket:
    return connect(port, certs, timeout_s=CLOSED_WITHIN_S)


class Client:
    """A WebSocket client on a blocking socket (wsproto), for the tests' own frames."""

    def __init__(self, port: int, certs: Certificates | None = None, *, protocols: tuple[str, ...] = ("sip",),
                 origin: str = ORIGIN) -> None:
        self.sock = _connect(port, certs)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"{LOOPBACK}:{port}", target="/", subprotocols=list(protocols),
                                               extra_headers=[(b"origin", origin.encode())])))
        self.upgrade = self.next_event()

    def next_event(self) -> object:
        while True:
            for event in self.ws.events():
                return event
            data = self.sock.recv(65536)
            if not data:
                return None
            self.ws.receive_data(data)

    def send(self, event: object) -> None:
        self.sock.sendall(self.ws.send(event))  # type: ignore[arg-type]


def _masked_frame(opcode_byte: int, declared: int, payload: bytes) -> bytes:
    """A client frame (mask of zeros) that declares `declared` bytes and carries `payload`."""
    if declared < 126:
        head = bytes([opcode_byte, 0x80 | declared])
    elif declared < 65536:
        head = bytes([opcode_byte, 0x80 | 126]) + declared.to_bytes(2, "big")
    else:
        head = bytes([opcode_byte, 0x80 | 127]) + declared.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def _options(port: int) -> str:
    return (f"OPTIONS sip:{LOOPBACK}:{port};transport=ws SIP/2.0\r\n"
            "Via: SIP/2.0/WS q8s7kd2m1a0z.invalid;branch=z9hG4bK-ws-options\r\n"
            "From: <sip:probe@callers.invalid>;tag=ws1\r\nTo: <sip:probe@callers.invalid>\r\n"
            "Call-ID: ws-options-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Contact: <sip:probe@q8s7kd2m1a0z.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n")


def _hostile(ports: dict[str, int], certs: Certificates) -> dict[str, tuple[bool, bytes]]:
    """Open every hostile connection, then see how the edge answered and closed each."""
    ws, wss = ports["ws"], ports["wss"]
    slow_upgrade = _connect(ws)
    slow_upgrade.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    slow_tls = _connect(wss)                        # TCP to the wss port, never a ClientHello
    garbage = _connect(ws)
    garbage.sendall(b"\x16\x03\x01\x02\x00garbage before any upgrade\r\n\r\n")
    no_sip = Client(ws, protocols=("chat",))
    foreign = Client(ws, certs=None, origin="https://evil.example.net")
    oversize = Client(wss, certs)
    oversize.sock.sendall(_masked_frame(0x81, 100_000, b"x" * 6000))
    unfinished = Client(ws)
    unfinished.sock.sendall(_masked_frame(0x01, 40, b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/WS ") )
    return {
        "slow_upgrade": read_until_closed(slow_upgrade), "slow_tls": read_until_closed(slow_tls),
        "garbage": read_until_closed(garbage),
        "no_sip": (isinstance(no_sip.upgrade, RejectConnection) and no_sip.upgrade.status_code == 400,
                   b""),
        "foreign": (isinstance(foreign.upgrade, RejectConnection) and foreign.upgrade.status_code == 403, b""),
        "oversize": (isinstance(oversize.upgrade, AcceptConnection), b""),
        "oversize_closed": _close_code(oversize),
        "unfinished": read_until_closed(unfinished.sock),
    }


def _close_code(client: Client) -> tuple[bool, bytes]:
    event = client.next_event()
    code = event.code if isinstance(event, CloseConnection) else None
    client.sock.close()
    return code == 1009, str(code).encode()


def _well_behaved(port: int, certs: Certificates | None) -> tuple[bool, bool, str]:
    """Upgraded with `sip`; a ping gets its pong; an OPTIONS gets its answer on the connection."""
    client = Client(port, certs)
    accepted = isinstance(client.upgrade, AcceptConnection) and client.upgrade.subprotocol == "sip"
    client.send(Ping(payload=b"cc"))
    pong = client.next_event()
    client.send(TextMessage(data=_options(port)))
    answer = client.next_event()
    client.sock.close()
    return accepted, isinstance(pong, Pong) and pong.payload == b"cc", \
        answer.data if isinstance(answer, TextMessage) else repr(answer)


def _over_the_limit(port: int) -> tuple[bool, bool]:
    held = [Client(port) for _ in range(int(LIMITS["max_connections_per_source"]))]
    try:
        served = all(isinstance(c.upgrade, AcceptConnection) for c in held)
        refused, _ = read_until_closed(_connect(port))
    finally:
        for client in held:
            client.sock.close()
    return served, refused


async def test_hostile_websocket_connections_are_bounded_and_calls_go_on(
        edge: EdgeUnderTest, sipp: SippLauncher, certs: Certificates, logs: list[dict[str, object]]) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    ports = stack.stream_ports

    def call(name: str) -> tuple[object, object]:
        agent = sipp.start("agent_early_uas", name=f"agent-{name}")
        dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
        caller = sipp.start("caller_answered_bye", name=f"caller-{name}", remote_port=edge.port,
                            service="support", pause_ms=3000)
        return caller, agent

    caller, agent = call("beside")
    started = time.monotonic()
    outcome = await asyncio.to_thread(_hostile, ports, certs)
    await expect_success(caller, agent)  # type: ignore[arg-type]
    assert time.monotonic() - started < 3 * CLOSED_WITHIN_S
    assert {name: ok for name, (ok, _) in outcome.items()} == {name: True for name in outcome}, outcome
    assert outcome["garbage"][1].startswith(b"HTTP/1.1 400 "), outcome["garbage"]

    for port, tls in ((ports["ws"], None), (ports["wss"], certs)):
        accepted, ponged, answer = await asyncio.to_thread(_well_behaved, port, tls)
        assert accepted and ponged, answer
        assert answer.startswith("SIP/2.0 200 ") and "branch=z9hG4bK-ws-options" in answer, answer
    served, refused = await asyncio.to_thread(_over_the_limit, ports["ws"])
    assert (served, refused) == (True, True)

    caller, agent = call("after")
    await expect_success(caller, agent)  # type: ignore[arg-type]
    assert stack.active_calls() == 0
    causes = {str(r.get("reason")) for r in logs if r.get("event") == "sip.stream_closed"}
    assert {"ws_handshake_timeout", "handshake_timeout", "garbage", "ws_no_sip", "ws_origin", "oversize",
            "message_timeout"} <= causes, causes
    assert any(r.get("event") == "sip.stream_refused" for r in logs)


def test_websocket_settings_reach_the_stream_options() -> None:
    """CC_SIP_WS_* become the stream options; without a ws/wss port nothing listens for them."""
    from callcenter.settings import EdgeSettings
    from callcenter_sip_edge.sippy.streams import StreamOptions

    options = StreamOptions.from_settings(EdgeSettings(
        sip_ws_port=0, sip_wss_port=5443, sip_ws_handshake_timeout_s=2.5,
        sip_ws_allowed_origins=" https://agents.example.com, https://backup.example.com ,"))
    assert (options.ws_port, options.wss_port, options.ws_handshake_timeout_s) == (0, 5443, 2.5)
    assert options.ws_allowed_origins == ("https://agents.example.com", "https://backup.example.com")
    assert options.enabled
    assert not StreamOptions.from_settings(EdgeSettings()).enabled
