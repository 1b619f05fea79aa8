"""The api and cdr-writer benchmarks run end to end in their --quick mode and print their numbers (not
checked: values depend on the machine). Each starts its own servers and processes; bounded in time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
NUM = r"[0-9.]+"

EXPECTED = {
    "api_auth.py": [
        rf"^auth on +\d+ requests +{NUM}/s +p50 +{NUM} ms +p99 +{NUM} ms +non-2xx 0 +api CPU +{NUM} µs/request",
        rf"^auth off +\d+ requests +{NUM}/s +p50 +{NUM} ms +p99 +{NUM} ms +non-2xx 0 +api CPU +{NUM} µs/request",
        rf"^auth cost: rate [-+]{NUM}% lower with auth; api CPU per request [-+]{NUM}%",
    ],
    "cdr_writer.py": [
        r"^stream: \d+ entries, 1000 calls, 1250 CDR rows \(250 attempt rows\)",
        rf"^plain batched INSERT +1250 rows in {NUM} s +[0-9,]+ rows/s",
        rf"^cdr-writer CC_BATCH=400 +1250 rows in {NUM} s +[0-9,]+ rows/s +\(\d+ transactions, \d+ rows each\) +"
        rf"\d+% of the plain INSERT",
    ],
    "sse_fanout.py": [
        rf"^event -> delivered: n=\d+ +p50 {NUM} ms +p99 {NUM} ms +max {NUM} ms",
        r"^completeness: \d+/100 subscribers got every event in order once; \d+ deliveries missing",
        rf"^api RSS: {NUM} MiB before, {NUM} MiB subscribed, .*per subscriber -?{NUM} KiB",
        rf"^client check: client CPU {NUM}% of a core, event-loop lag p99 {NUM} ms",
    ],
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_quick_mode_prints_its_numbers(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    for pattern in EXPECTED[script]:
        assert re.search(pattern, done.stdout, re.MULTILINE), f"{script}: no line {pattern!r} in:\n{done.stdout}"
