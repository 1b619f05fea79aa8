"""The sip-edge's admission of new INVITEs: trusted networks and the per-source token bucket."""

from __future__ import annotations

import pytest

from callcenter_sip_edge import guard as guard_module
from callcenter_sip_edge.guard import SourceGuard, parse_networks


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_default_trusts_every_source_and_has_no_limit() -> None:
    g = SourceGuard()
    for ip in ("127.0.0.1", "203.0.113.9", "::1", "2001:db8::1", "not-an-ip"):
        assert g.check(ip) is None


def test_allow_list() -> None:
    g = SourceGuard("10.0.0.0/8, 192.0.2.7 ,2001:db8::/32")
    assert g.check("10.1.2.3") is None and g.check("192.0.2.7") is None and g.check("2001:db8::5") is None
    assert g.check("::ffff:10.9.9.9") is None  # IPv4-mapped
    for ip in ("192.0.2.8", "127.0.0.1", "::1", "garbage", ""):
        refusal = g.check(ip)
        assert refusal is not None and (refusal.code, refusal.retry_after_s) == (403, None)
    assert g.refused["untrusted_source"] == 5
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/33")
    with pytest.raises(ValueError):
        parse_networks(" , ")


def test_token_bucket_per_source() -> None:
    clock = Clock()
    g = SourceGuard(rate=2.0, burst=3, clock=clock)
    assert [g.check("10.0.0.1") for _ in range(3)] == [None] * 3
    refusal = g.check("10.0.0.1")
    assert refusal is not None and (refusal.code, refusal.retry_after_s) == (503, 1)
    assert g.check("10.0.0.2") is None  # another source has its own bucket
    clock.t += 0.5  # one token back at 2/s
    assert g.check("10.0.0.1") is None
    assert g.check("10.0.0.1") is not None
    clock.t += 60  # refills up to the burst, not beyond
    assert [g.check("10.0.0.1") for _ in range(4)].count(None) == 3
    assert g.refused["rate_limited"] == 3


def test_slow_rate_gives_a_longer_retry_after() -> None:
    g = SourceGuard(rate=0.1, burst=1, clock=Clock())
    assert g.check("10.0.0.1") is None
    refusal = g.check("10.0.0.1")
    assert refusal is not None and refusal.retry_after_s == 10


def test_the_table_of_sources_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_module, "MAX_TRACKED_SOURCES", 100)
    clock = Clock()
    g = SourceGuard(rate=1.0, burst=1, clock=clock)
    for n in range(1000):
        clock.t += 0.001
        g.check(f"10.0.{n // 256}.{n % 256}")
    assert g.tracked_sources() <= 100


def test_a_limit_over_all_sources() -> None:
    clock = Clock()
    g = SourceGuard(rate=10.0, burst=2, total_rate=1.0, total_burst=3, clock=clock)
    results = [g.check(f"10.0.0.{n}") for n in range(5)]   # five sources, one INVITE each
    assert results[:3] == [None] * 3
    assert all(r is not None and (r.code, r.reason) == (503, "total_rate_limited") for r in results[3:])
    assert g.refused == {"untrusted_source": 0, "rate_limited": 0, "total_rate_limited": 2}
    # a source refused by the total limit keeps its own token
    clock.t += 1.0
    assert g.check("10.0.0.4") is None
    assert g.check("10.0.0.4") is not None   # the total bucket is empty again


def test_time_is_the_arrival_not_the_reading() -> None:
    # 20 INVITEs that arrived within 0.1 s, read one by one over 2 s: the burst of 10 passes, no more
    clock = Clock()
    g = SourceGuard(rate=5.0, burst=10, clock=clock)
    admitted = 0
    for n in range(20):
        clock.t += 0.1                       # read time: the reactor is slow
        admitted += g.check("10.0.0.1", at=100.0 + n * 0.005) is None
    assert admitted == 10
    # an arrival time older than the last one refills nothing
    assert g.check("10.0.0.1", at=99.0) is not None


def test_priority_networks() -> None:
    assert not SourceGuard().may_set_priority("127.0.0.1")   # none by default
    g = SourceGuard(priority="127.0.0.0/8, ::1")
    assert g.may_set_priority("127.0.0.1") and g.may_set_priority("::1")
    assert not g.may_set_priority("10.0.0.1") and not g.may_set_priority("junk")


def test_answers_per_source_are_remembered_and_stay_right(monkeypatch: pytest.MonkeyPatch) -> None:
    g = SourceGuard("10.0.0.0/8, 2001:db8::/32")
    parsed: list[str] = []
    real = guard_module.ipaddress.ip_address

    def counted(text: str) -> object:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(guard_module.ipaddress, "ip_address", counted)
    for _ in range(3):   # the same answers every time, each source parsed once
        assert g.check("10.1.2.3") is None and g.check("::ffff:10.9.9.9") is None
        assert g.check("[2001:db8::5]") is None
        assert g.check("192.0.2.8") is not None and g.check("junk") is not None
    assert sorted(parsed) == sorted(["10.1.2.3", "::ffff:10.9.9.9", "2001:db8::5", "192.0.2.8", "junk"])
