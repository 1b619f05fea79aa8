"""bench/wire_clock.py, the bench's witness of agent BYE -> next INVITE: the kernel's stamps of real
datagrams on lo, only those of the port it watches, paired per agent in order."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
from wire_clock import WireClock  # noqa: E402  (bench/ is not a package)

pytestmark = pytest.mark.skipif(WireClock.available() is not None,
                                reason=f"a packet socket needs root or CAP_NET_RAW: {WireClock.available()}")


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_a_bye_and_the_next_invite_to_that_agent_are_timed_on_the_wire() -> None:
    with _udp() as phone, _udp() as edge, _udp() as elsewhere:
        port = phone.getsockname()[1]
        with WireClock(port) as wire:
            time.sleep(0.05)
            phone.sendto(b"BYE sip:edge@127.0.0.1 SIP/2.0\r\nFrom: <sip:ag7@127.0.0.1>;tag=1\r\n\r\n",
                         edge.getsockname())
            # not the watched port: never seen, so this INVITE cannot close the pair
            elsewhere.sendto(b"INVITE sip:ag7@127.0.0.1 SIP/2.0\r\n\r\n", edge.getsockname())
            time.sleep(0.03)
            edge.sendto(b"INVITE sip:ag8@127.0.0.1 SIP/2.0\r\n\r\n", ("127.0.0.1", port))   # another agent
            edge.sendto(b"INVITE sip:ag7@127.0.0.1 SIP/2.0\r\n\r\n", ("127.0.0.1", port))
            edge.sendto(b"INVITE sip:ag7@127.0.0.1 SIP/2.0\r\n\r\n", ("127.0.0.1", port))   # no BYE before it
        assert {(sport, dport) for _, sport, dport, _ in wire.packets} == {
            (port, edge.getsockname()[1]), (edge.getsockname()[1], port)}
        assert len(wire.packets) == 4
        gaps = wire.bye_to_invite_ms()
        assert list(gaps) == ["ag7"]
        assert len(gaps["ag7"]) == 1
        assert 29 <= gaps["ag7"][0] < 200
