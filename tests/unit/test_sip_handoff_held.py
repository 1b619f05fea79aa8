"""The hand-off held for a reactor turn (sip_stack._Handoff.hold/release, sippy/turns.py): the facts
of one turn wake the asyncio loop once, at its end, in order."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from callcenter_sip_edge.sip_stack import _Handoff


def test_items_put_while_held_wake_the_consumer_once_at_the_outermost_release() -> None:
    got: list[int] = []
    wakes: list[Callable[[], None]] = []
    handoff = _Handoff(got.append, wakes.append)
    handoff.hold()
    handoff.put(0)
    handoff.hold()          # a nested turn: the timers a datagram batch runs at its end
    handoff.put(1)
    handoff.release()
    handoff.put(2)
    assert wakes == [] and got == []
    handoff.release()
    assert len(wakes) == 1
    wakes.pop()()
    assert got == [0, 1, 2]


def test_a_turn_without_items_wakes_nobody_and_an_item_outside_a_turn_wakes_at_once() -> None:
    got: list[int] = []
    wakes: list[Callable[[], None]] = []
    handoff = _Handoff(got.append, wakes.append)
    handoff.hold()
    handoff.release()
    assert wakes == []
    handoff.put(7)
    assert len(wakes) == 1
    wakes.pop()()
    assert got == [7]


def test_a_release_while_a_drain_is_pending_adds_no_second_wake_up() -> None:
    got: list[int] = []
    wakes: list[Callable[[], None]] = []
    handoff = _Handoff(got.append, wakes.append)
    handoff.put(0)                  # outside a turn: a drain is scheduled
    handoff.hold()
    handoff.put(1)
    handoff.release()
    assert len(wakes) == 1          # the pending drain takes both
    wakes.pop()()
    assert got == [0, 1] and len(handoff) == 0


def test_a_failed_wake_up_at_release_is_retried_by_the_next_turn() -> None:
    got: list[int] = []
    fail = [True]

    def wake(drain: Callable[[], None]) -> None:
        if fail[0]:
            raise RuntimeError("loop closed")
        drain()

    handoff = _Handoff(got.append, wake)
    handoff.hold()
    handoff.put(0)
    with pytest.raises(RuntimeError):
        handoff.release()
    fail[0] = False
    handoff.hold()
    handoff.put(1)
    handoff.release()
    assert got == [0, 1]
