"""bench/stock_profile.py turns py-spy's collapsed stacks into the shares the bench README quotes:
self share (innermost frame) and inclusive share (anywhere on the stack, once per sample), and an SVG
flame graph whose boxes carry the same counts."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import stock_profile  # noqa: E402  (bench/ is not a package)

RAW = """\
thread (0x7f01);run (loop.py:10);handle (edge/sip.py:40);parse (sippy/msg.py:7) 60
thread (0x7f01);run (loop.py:10);handle (edge/sip.py:41);parse (sippy/msg.py:9) 15
thread (0x7f01);run (loop.py:10);handle (edge/sip.py:40) 5
thread (0x7f02);poll (redis/conn.py:3);recurse (r.py:1);recurse (r.py:2) 20
"""


def test_self_and_inclusive_shares_per_function(tmp_path: Path) -> None:
    path = tmp_path / "edge.collapsed"
    path.write_text(RAW)
    stacks = stock_profile.read_collapsed(path)
    assert sum(stacks.values()) == 100
    text = stock_profile.summary("sip-edge", stacks)
    assert "100 samples" in text and "0 of them waiting" in text
    # parse is innermost in 60 + 15 samples, on two lines of one function
    assert re.search(r"^ +75\.0%  parse \(sippy/msg\.py\)$", text, re.M), text
    # handle is on the stack of 80 samples, innermost in 5 of them
    assert re.search(r"^ +80\.0%  handle \(edge/sip\.py\)$", text, re.M), text
    assert re.search(r"^ +5\.0%  handle \(edge/sip\.py\)$", text, re.M), text
    # a recursive function counts once per sample for its inclusive share
    assert re.search(r"^ +20\.0%  recurse \(r\.py\)$", text, re.M), text
    assert "thread (0x7f01) 80%" in text and "thread (0x7f02) 20%" in text


def test_waiting_samples_are_left_out_of_the_shares() -> None:
    stacks: Counter[tuple[str, ...]] = Counter({("run (a.py:1)", "EpollSelector.select (selectors.py:9)"): 50,
                                                ("run (a.py:1)", "work (a.py:5)"): 50})
    text = stock_profile.summary("svc", stacks)
    assert "100 samples at 100/s, 50 of them waiting" in text and "shares of the other 50" in text
    assert re.search(r"^ +100\.0%  work \(a\.py\)$", text, re.M), text
    assert "EpollSelector" not in text


def test_flame_graph_boxes_carry_the_counts() -> None:
    stacks: Counter[tuple[str, ...]] = Counter({("a", "b"): 3, ("a", "c"): 1, ("d",): 4})
    svg = stock_profile.flame_svg(stacks, "t", width=800)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<title>all (8 samples, 100.00%)</title>" in svg
    assert "<title>a (4 samples, 50.00%)</title>" in svg and "<title>b (3 samples, 37.50%)</title>" in svg
    widths = {m.group(1): float(m.group(2)) for m in
              re.finditer(r"<title>(\w+) \(.*?</title><rect x=\"[\d.]+\" y=\"\d+\" width=\"([\d.]+)\"", svg)}
    assert widths["all"] == 800.0 and widths["a"] == 400.0 and widths["c"] == 100.0


def test_redis_summary_is_the_delta_of_commandstats() -> None:
    before = {"evalsha": {"calls": 10.0, "usec": 1000.0}, "xadd": {"calls": 5.0, "usec": 50.0}}
    after = {"evalsha": {"calls": 110.0, "usec": 31000.0}, "xadd": {"calls": 105.0, "usec": 10050.0},
             "ping": {"calls": 1.0, "usec": 0.0}}
    text = stock_profile.redis_summary(before, after)
    assert re.search(r"75\.0% +30 +100 +300\.0  evalsha", text), text
    assert re.search(r"25\.0% +10 +100 +100\.0  xadd", text), text
