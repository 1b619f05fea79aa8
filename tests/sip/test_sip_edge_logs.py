"""The edge's log cannot be written by outsiders: what sippy prints about bad datagrams (tracebacks,
the raw messages) comes out as structured records, one per complaint, values escaped and cut, each
cause rate-limited; a JSON object in a header never becomes a record of its own.

Logging set-up is process-wide, so the stack runs in a child process (tests/sip/edge_log_probe.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from callcenter_sip_edge.log_limits import MAX_VALUE_CHARS

PROBE = Path(__file__).with_name("edge_log_probe.py")
REPEAT = 40


def test_sippy_output_becomes_rate_limited_json_records() -> None:
    result = subprocess.run([sys.executable, str(PROBE), str(REPEAT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line[:200]!r}") from None
    assert all(isinstance(r, dict) and "event" in r for r in records)
    # nobody but the edge names the events
    assert not [r for r in records if r["event"] == "agent.paused"]
    from_sippy = [r for r in records if r["event"] in ("sip.stack_error", "sip.stack_output", "sip.stack_log")]
    assert from_sippy, [r["event"] for r in records]
    # 3 kinds of bad datagram sent 40 times each: a handful of records per cause, not 120 tracebacks
    per_cause = Counter((r["event"], r.get("error"), r.get("message", r.get("text", ""))[:20]) for r in from_sippy)
    assert max(per_cause.values()) <= 5, per_cause
    assert len(from_sippy) <= 5 * 6
    for record in records:
        for value in record.values():
            if isinstance(value, str) and record["event"].startswith("sip.stack_"):
                assert len(value) <= MAX_VALUE_CHARS + 40 and "\n" not in value
