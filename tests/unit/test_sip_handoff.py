"""The batched hand-off between the SIP thread and the asyncio thread (sip_stack._Handoff)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from callcenter_sip_edge.sip_stack import _Handoff


def test_items_arrive_in_order_with_one_wake_up_per_batch() -> None:
    got: list[int] = []
    wakes: list[Callable[[], None]] = []
    handoff = _Handoff(got.append, wakes.append)
    for i in range(5):
        handoff.put(i)
    assert len(wakes) == 1 and got == []
    wakes.pop()()
    assert got == [0, 1, 2, 3, 4]
    handoff.put(5)
    assert len(wakes) == 1
    wakes.pop()()
    assert got == [0, 1, 2, 3, 4, 5]


def test_an_item_put_while_draining_is_not_stranded() -> None:
    got: list[int] = []
    wakes: list[Callable[[], None]] = []

    def consume(item: int) -> None:
        got.append(item)
        if item == 0:
            handoff.put(1)  # a producer puts while the consumer drains

    handoff = _Handoff(consume, wakes.append)
    handoff.put(0)
    wakes.pop()()
    while wakes:
        wakes.pop()()
    assert got == [0, 1]
    assert len(handoff) == 0


def test_a_failed_wake_up_is_retried_by_the_next_put() -> None:
    got: list[int] = []
    fail = [True]

    def wake(drain: Callable[[], None]) -> None:
        if fail[0]:
            raise RuntimeError("loop closed")
        drain()

    handoff = _Handoff(got.append, wake)
    try:
        handoff.put(0)
    except RuntimeError:
        pass
    fail[0] = False
    handoff.put(1)
    assert got == [0, 1]


def test_many_producer_threads_lose_nothing() -> None:
    got: list[int] = []
    ready = threading.Event()
    wakes: list[Callable[[], None]] = []
    lock = threading.Lock()

    def wake(drain: Callable[[], None]) -> None:
        with lock:
            wakes.append(drain)

    handoff = _Handoff(got.append, wake)

    def produce(base: int) -> None:
        ready.wait()
        for i in range(1000):
            handoff.put(base + i)

    threads = [threading.Thread(target=produce, args=(n * 1000,)) for n in range(4)]
    for t in threads:
        t.start()
    ready.set()
    while any(t.is_alive() for t in threads) or wakes:
        with lock:
            pending, wakes[:] = list(wakes), []
        for drain in pending:
            drain()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(4000))
    for n in range(4):
        mine = [i for i in got if n * 1000 <= i < (n + 1) * 1000]
        assert mine == sorted(mine)  # each producer's items stay in its order
