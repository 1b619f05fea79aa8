"""Fixtures of the whole-system tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from callcenter_dev.sipp import Sipp


@pytest.fixture
def peers() -> Iterator[list[Sipp]]:
    """SIPp peers a test starts; each is stopped at the end of the test, whatever happened."""
    started: list[Sipp] = []
    yield started
    for p in started:
        p.stop()
