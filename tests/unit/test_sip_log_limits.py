"""Rate-limited, escaped log records for what outsiders cause (callcenter_sip_edge.log_limits)."""

from __future__ import annotations

import json
from typing import Any

from callcenter_sip_edge.log_limits import MAX_VALUE_CHARS, RateLimitedLog, clip


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.records.append((level, event, fields))


def test_each_cause_is_limited_and_the_rest_counted() -> None:
    clock, out = Clock(), Recorder()
    limited = RateLimitedLog(out, burst=2, window_s=10.0, clock=clock)
    logged = [limited.emit("warning", "sip.datagram_dropped", "not_utf8", source="x") for _ in range(5)]
    assert logged == [True, True, False, False, False]
    assert limited.emit("warning", "sip.datagram_dropped", "oversized", source="y")   # its own limit
    assert len(out.records) == 3
    limited.flush()   # the window has not ended: nothing to say yet
    assert len(out.records) == 3
    clock.t += 10.0
    limited.flush()
    assert out.records[-1] == ("warning", "log.suppressed", {"suppressed_event": "sip.datagram_dropped",
                                                            "cause": "not_utf8", "suppressed": 3, "window_s": 10.0})
    assert limited.emit("warning", "sip.datagram_dropped", "not_utf8", source="x")   # a new window
    assert [r[1] for r in out.records].count("log.suppressed") == 1   # "oversized" left nothing out


def test_values_are_cut_and_escaped() -> None:
    out = Recorder()
    limited = RateLimitedLog(out)
    forged = 'x\r\n{"event": "agent.paused", "level": "critical"}\n' + "y" * 10_000
    limited.emit("info", "sip.stack_output", "forged", text=forged, count=3)
    (_, _, fields), = out.records
    assert fields["count"] == 3
    assert "\n" not in fields["text"] and "\r" not in fields["text"] and "\\r\\n" in fields["text"]
    assert len(fields["text"]) < MAX_VALUE_CHARS + 40 and fields["text"].endswith("chars)")
    assert json.loads(json.dumps(fields))["text"] == fields["text"]
    assert clip("short") == "short"


def test_distinct_causes_stay_bounded(monkeypatch: Any) -> None:
    from callcenter_sip_edge import log_limits

    monkeypatch.setattr(log_limits, "MAX_CAUSES", 10)
    clock, out = Clock(), Recorder()
    limited = RateLimitedLog(out, burst=1, window_s=10.0, clock=clock)
    for n in range(1000):
        limited.emit("info", "sip.stack_output", f"cause-{n}", text="t")
    assert len(out.records) <= 11   # ten causes, then all others share one
    assert len(limited._windows) <= 11
