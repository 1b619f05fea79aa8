"""Issue 15: a running edge hands the GIL between its SIP thread and its asyncio thread quickly.

Every hop of an agent's BYE -> next INVITE crosses the two threads (the fact to the loop, the ring
command back to the reactor); a thread woken while the other one works waits for the GIL until that
one blocks or the interpreter's switch interval runs out (5 ms by default). The stack sets it when
it starts (`sip_stack.SWITCH_INTERVAL_S`).
"""

from __future__ import annotations

import asyncio
import socket
import sys

from sip_harness import ScriptedDispatcher, started_stack

from callcenter_sip_edge.sip_stack import SWITCH_INTERVAL_S
from callcenter_sip_edge.sippy import turns


def test_a_started_stack_sets_the_switch_interval_to_a_millisecond() -> None:
    assert SWITCH_INTERVAL_S <= 0.001

    async def started_interval() -> float:
        stack, _ = started_stack(ScriptedDispatcher())
        try:
            return sys.getswitchinterval()
        finally:
            await asyncio.to_thread(stack.stop)

    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)   # the interpreter's default, whatever ran before in this process
    try:
        assert asyncio.run(started_interval()) == SWITCH_INTERVAL_S
    finally:
        sys.setswitchinterval(before)


def test_the_udp_server_gives_queued_commands_a_turn_after_each_datagram() -> None:
    """The running stack installs its between-datagrams hook, and the UDP server calls it."""
    calls: list[int] = []

    async def served() -> None:
        stack, port = started_stack(ScriptedDispatcher())
        try:
            installed = turns._between
            assert installed is not None and installed.__self__ is stack   # type: ignore[attr-defined]

            def counting() -> None:
                calls.append(1)
                installed()

            turns._between = counting
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.bind(("127.0.0.1", 0))
                peer.setblocking(False)
                for n in range(3):
                    peer.sendto(_options(port, peer.getsockname()[1], n), ("127.0.0.1", port))
                for _ in range(200):
                    if len(calls) >= 3:
                        break
                    await asyncio.sleep(0.025)
        finally:
            await asyncio.to_thread(stack.stop)

    before = sys.getswitchinterval()
    try:
        asyncio.run(served())
    finally:
        sys.setswitchinterval(before)
    assert len(calls) >= 3
    assert turns._between is None   # cleared with the stack


def _options(port: int, from_port: int, n: int) -> bytes:
    return (f"OPTIONS sip:edge@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{from_port};branch=z9hG4bK-crossing-{n}\r\n"
            f"From: <sip:probe@127.0.0.1:{from_port}>;tag=p{n}\r\nTo: <sip:edge@127.0.0.1:{port}>\r\n"
            f"Call-ID: crossing-{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
