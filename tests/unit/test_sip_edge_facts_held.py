"""Issue 15: while the UDP socket is read in pieces (a burst: the reactor's last batch left
datagrams waiting), the stack's facts wait up to FACTS_HELD_ITERATIONS loop iterations for the rest
of the burst, so that it makes a few report batches; with the socket read empty they go out in the
next iteration, and the wait ends as soon as the socket is."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from callcenter_sip_edge.sip_stack import FACTS_HELD_ITERATIONS, SipStack


def _fact(n: int) -> SimpleNamespace:
    return SimpleNamespace(kind="call_arrived", call_id=f"c{n}")


async def _iterations_until(delivered: list[object], count: int, bound: int = 50) -> int:
    for n in range(1, bound + 1):
        await asyncio.sleep(0)   # one loop iteration
        if len(delivered) >= count:
            return n
    raise AssertionError(f"{len(delivered)} of {count} facts delivered in {bound} iterations")


async def test_facts_go_out_in_the_next_iteration_when_the_socket_was_read_empty() -> None:
    delivered: list[object] = []
    stack = SipStack(host="127.0.0.1", port=0, on_fact=delivered.append, loop=asyncio.get_running_loop())
    stack._reactor = SimpleNamespace(backlogged=False)   # type: ignore[assignment]
    stack._emit_fact(_fact(1))
    stack._emit_fact(_fact(2))
    assert delivered == []   # never from inside the turn that made them
    assert await _iterations_until(delivered, 2) == 1
    assert [f.call_id for f in delivered] == ["c1", "c2"]   # type: ignore[attr-defined]


async def test_facts_wait_a_bounded_number_of_iterations_through_a_burst() -> None:
    delivered: list[object] = []
    stack = SipStack(host="127.0.0.1", port=0, on_fact=delivered.append, loop=asyncio.get_running_loop())
    stack._reactor = SimpleNamespace(backlogged=True)   # type: ignore[assignment]
    stack._emit_fact(_fact(1))
    waited = await _iterations_until(delivered, 1)
    assert waited == FACTS_HELD_ITERATIONS + 1   # held, then out although the burst goes on
    # the next fact of a burst that still goes on waits again, as long and no longer
    stack._emit_fact(_fact(2))
    assert await _iterations_until(delivered, 2) == FACTS_HELD_ITERATIONS + 1


async def test_the_wait_ends_when_the_socket_is_read_empty() -> None:
    delivered: list[object] = []
    reactor = SimpleNamespace(backlogged=True)
    stack = SipStack(host="127.0.0.1", port=0, on_fact=delivered.append, loop=asyncio.get_running_loop())
    stack._reactor = reactor   # type: ignore[assignment]
    stack._emit_fact(_fact(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    stack._emit_fact(_fact(2))   # a later batch of the same burst joins the held facts
    assert delivered == []
    reactor.backlogged = False   # the last batch read the socket empty
    assert await _iterations_until(delivered, 2) == 1
    assert [f.call_id for f in delivered] == ["c1", "c2"]   # type: ignore[attr-defined]
