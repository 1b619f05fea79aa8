"""Issue 15, agent BYE -> next INVITE: nothing on the path waits for a batch to fill.

- a command handed to the reactor while it reads a batch of datagrams runs before the rest of the
  batch (`sippy/turns.between`);
- the dispatcher reads the reports with no linger by default (`CC_READ_LINGER_MS` 0);
- a datagram's arrival is the kernel's receive stamp (what the bench's socket wait is read from).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from callcenter.contract.commands import Command, Ring
from callcenter.settings import DispatcherSettings
from callcenter_sip_edge.sip_stack import SipStack, _Handoff
from callcenter_sip_edge.sippy import turns


def test_the_dispatcher_reads_reports_without_lingering_by_default() -> None:
    assert DispatcherSettings().read_linger_ms == 0


class _Router:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def execute(self, command: Command) -> None:
        self.got.append(command)


def test_commands_queued_during_a_datagram_batch_run_between_two_datagrams() -> None:
    router = _Router()
    loop = asyncio.new_event_loop()
    loop.close()   # no fact is emitted here
    stack = SipStack(host="127.0.0.1", port=0, on_fact=lambda fact: None, loop=loop)
    stack._router, stack._reactor, stack._state = router, object(), "running"
    wakes: list[Callable[[], None]] = []
    stack._commands = _Handoff(SipStack._run_command, wakes.append)   # the reactor is busy: its wake-up waits
    ring = Ring(call_id="c", offer_id="o", agent_id="7", uri="sip:7@h", timeout_s=15)
    stack.execute(ring)
    assert router.got == [] and len(wakes) == 1
    turns.set_between(stack._commands_between_datagrams)
    try:
        turns.between()            # what the UDP server calls after each datagram of a batch
    finally:
        turns.clear_hooks()
    assert router.got == [ring]
    wakes.pop()()                  # the wake-up, when it comes, finds nothing left to run
    assert router.got == [ring]
    stack.execute(ring)            # and the next command schedules a wake-up of its own
    assert len(wakes) == 1


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's receive stamps are read on Linux only")
def test_a_datagrams_arrival_is_the_kernels_receive_stamp_not_the_reading() -> None:
    """The edge's hop 'datagram received' (and its per-source INVITE rate) counts from the kernel's
    stamp: Python 3.11 does not name SO_TIMESTAMPNS, and the read time was used instead."""
    from callcenter_sip_edge.sippy import transport

    assert transport._SO_TIMESTAMPNS is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as edge, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        edge.bind(("127.0.0.1", 0))
        edge.setsockopt(socket.SOL_SOCKET, transport._SO_TIMESTAMPNS, 1)
        peer.sendto(b"OPTIONS", edge.getsockname())
        time.sleep(0.05)   # the datagram waits in the socket at least this long
        _data, ancillary, _flags, _address = edge.recvmsg(64, transport._TIMESTAMP_CMSG_BYTES)
        mono_now = time.monotonic()
        arrived = transport._arrival(ancillary, mono_now - time.time(), mono_now)
    assert mono_now - arrived.monot >= 0.045
