"""`CC_REDIS_WAIT_REPLICAS` and `CC_REDIS_WAIT_TIMEOUT_MS`: off by default, read by every service,
turned into the WAIT the edge and the dispatcher send (callcenter.redis_durability)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from callcenter.redis_durability import ReplicaWait
from callcenter.settings import DispatcherSettings, EdgeSettings


def test_wait_is_off_by_default() -> None:
    s = EdgeSettings()
    assert (s.redis_wait_replicas, s.redis_wait_timeout_ms) == (0, 50)
    assert ReplicaWait.of(s.redis_wait_replicas, s.redis_wait_timeout_ms) is None


def test_wait_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("CC_REDIS_WAIT_TIMEOUT_MS", "80")
    for s in (EdgeSettings(), DispatcherSettings()):
        assert ReplicaWait.of(s.redis_wait_replicas, s.redis_wait_timeout_ms) == ReplicaWait(1, 80)


def test_a_negative_or_zero_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_REDIS_WAIT_TIMEOUT_MS", "0")   # WAIT 0 would block forever
    with pytest.raises(ValidationError):
        EdgeSettings()
    monkeypatch.setenv("CC_REDIS_WAIT_TIMEOUT_MS", "50")
    monkeypatch.setenv("CC_REDIS_WAIT_REPLICAS", "-1")
    with pytest.raises(ValidationError):
        EdgeSettings()
