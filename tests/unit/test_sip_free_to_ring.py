"""Issue 15, agent BYE -> next INVITE: nothing on the path waits for a batch to fill.

- a fact that may free an agent (`call_ended`, `agent_failed`) reaches the asyncio loop at once,
  not at the end of the reactor turn it was produced in (a turn under load is a batch of datagrams);
- a command handed to the reactor while it reads a batch of datagrams runs before the rest of the
  batch (`sippy/turns.between`);
- the dispatcher reads the reports with no linger by default (`CC_READ_LINGER_MS` 0).
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
from callcenter_sip_edge.facts import Fact
from callcenter_sip_edge.sip_stack import URGENT_FACTS, SipStack, _Handoff
from callcenter_sip_edge.sippy import turns


def test_an_urgent_item_wakes_the_consumer_inside_a_held_turn_and_keeps_the_order() -> None:
    got: list[int] = []
    wakes: list[Callable[[], None]] = []
    handoff = _Handoff(got.append, wakes.append)
    handoff.hold()
    handoff.put(0)
    assert wakes == []
    handoff.put(1, urgent=True)
    assert len(wakes) == 1           # now, not at the release
    wakes.pop()()                    # the consumer runs while the turn goes on
    assert got == [0, 1]             # what came before the urgent one goes with it, in order
    handoff.put(2)
    assert wakes == []
    handoff.release()
    assert len(wakes) == 1           # the rest of the turn: one more wake-up, at its end
    wakes.pop()()
    assert got == [0, 1, 2]


def test_an_urgent_item_while_a_drain_is_pending_adds_no_wake_up() -> None:
    got: list[int] = []
    wakes: list[Callable[[], None]] = []
    handoff = _Handoff(got.append, wakes.append)
    handoff.put(0)
    handoff.hold()
    handoff.put(1, urgent=True)
    handoff.release()
    assert len(wakes) == 1
    wakes.pop()()
    assert got == [0, 1]


def _fact(kind: str) -> Fact:
    return Fact(kind=kind, call_id="c1", data={}, ts_ms=0)


def test_a_call_ended_reaches_the_loop_before_the_reactor_turn_ends() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        got: list[Fact] = []
        stack = SipStack(host="127.0.0.1", port=0, on_fact=got.append, loop=asyncio.get_running_loop())
        stack._facts.hold()                      # the SIP thread is inside a turn (sippy/turns.py)
        stack._emit_fact(_fact("media_answered"))
        stack._emit_fact(_fact("call_ended"))
        for _ in range(3):
            await asyncio.sleep(0)               # the loop runs what was handed to it
        stack._emit_fact(_fact("media_ended"))
        for _ in range(3):
            await asyncio.sleep(0)
        during = [f.kind for f in got]
        stack._facts.release()
        for _ in range(3):
            await asyncio.sleep(0)
        return during, [f.kind for f in got]

    during, after = asyncio.run(scenario())
    assert during == ["media_answered", "call_ended"]
    assert after == ["media_answered", "call_ended", "media_ended"]


def test_the_urgent_facts_are_the_ones_that_free_an_agent() -> None:
    assert {"call_ended", "agent_failed"} <= URGENT_FACTS
    # the frequent facts of a call's set-up still travel with their turn (one wake-up per turn)
    assert not {"call_arrived", "media_answered", "media_ended", "agent_answered", "checkpoint"} & URGENT_FACTS


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
