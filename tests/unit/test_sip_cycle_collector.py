"""When the sip-edge runs the cycle collector (automatic collection is off): idle, or a safety net."""

from __future__ import annotations

from itertools import pairwise

from callcenter_sip_edge.gc_policy import CycleCollector


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make() -> tuple[CycleCollector, Clock, list[float]]:
    clock, runs = Clock(), []

    def collect() -> int:
        runs.append(clock.t)
        return 0

    return CycleCollector(idle_after_s=40, max_interval_s=900, clock=clock, collect=collect), clock, runs


def test_nothing_runs_before_the_first_call_nor_while_calls_are_up() -> None:
    collector, clock, runs = make()
    for _ in range(5):
        clock.t += 30
        assert collector.tick(0) is None
    for _ in range(20):                      # 600 s of calls, under the 900 s safety net
        clock.t += 30
        assert collector.tick(50) is None
    assert runs == []


def test_one_collection_per_idle_period_once_the_last_dialogs_are_gone() -> None:
    collector, clock, runs = make()
    collector.tick(3)
    clock.t += 20
    assert collector.tick(0) is None          # idle for 20 s only: the calls' dialogs still linger
    clock.t += 25
    assert collector.tick(0) == 0             # idle 45 s
    clock.t += 60
    assert collector.tick(0) is None          # still the same idle period
    collector.tick(1)
    clock.t += 50
    assert collector.tick(0) == 0             # a new idle period
    assert len(runs) == 2


def test_under_constant_load_the_safety_net_runs_every_max_interval() -> None:
    collector, clock, runs = make()
    for _ in range(2000):
        clock.t += 5
        collector.tick(400)
    assert len(runs) == 11                   # 10,000 s / 900 s
    assert all(b - a >= 900 for a, b in pairwise(runs))
