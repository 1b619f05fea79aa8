"""Per-service profiles for bench/stock_calls.py --profile (issue 15, acceptance 2).

py-spy samples each Python service (sip-edge, dispatcher, cdr-writer, api) during a step and
writes its stacks collapsed (`--format raw`: `frame;frame;...;leaf count` per line). From those:
- an SVG flame graph per service, drawn here from the collapsed stacks (one sampling run per
  service, so the graph and the summary are the same samples);
- a text summary per service: the functions with the largest self share (the sample's innermost
  frame) and inclusive share (anywhere on the stack, counted once per sample), in % of the
  service's samples. py-spy drops idle samples by default, so the shares are of busy time.
redis-server is not Python: its costs come from INFO commandstats over the same window
(microseconds inside each command), written beside the others.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

PYSPY_RATE = 100  # samples per second per service
_LINE = re.compile(r":\d+\)$")


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy")
    if not Path(exe).exists():
        raise RuntimeError("py-spy is not installed (it is in the `bench` extra: scripts/bootstrap.sh)")
    return exe


@dataclass
class Profiling:
    """py-spy recorders attached to the services for one step, and redis-server's command stats."""

    outdir: Path
    pids: dict[str, int]
    redis_client: redis.Redis
    duration_s: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_before: dict[str, dict[str, float]] = field(default_factory=dict)

    def start(self) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.redis_before = commandstats(self.redis_client)
        for name, pid in self.pids.items():
            if name == "redis-server":
                continue
            self.procs[name] = subprocess.Popen(
                [py_spy(), "record", "--pid", str(pid), "--rate", str(PYSPY_RATE), "--duration", str(self.duration_s),
                 "--format", "raw", "--threads", "--output", str(self.outdir / f"{name}.collapsed")],
                stdout=subprocess.DEVNULL, stderr=open(self.outdir / f"{name}.py-spy.log", "wb"))

    def finish(self) -> str:
        """Wait for the recorders, write the graphs and summaries; return the summary text."""
        for proc in self.procs.values():
            try:
                proc.wait(self.duration_s + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        after = commandstats(self.redis_client)
        parts = []
        for name in self.procs:
            stacks = read_collapsed(self.outdir / f"{name}.collapsed")
            if not stacks:
                parts.append(f"== {name}: no samples (see {name}.py-spy.log)\n")
                continue
            (self.outdir / f"{name}.svg").write_text(flame_svg(stacks, f"{name}: {sum(stacks.values())} samples"))
            parts.append(summary(name, stacks))
        parts.append(redis_summary(self.redis_before, after))
        text = "\n".join(parts)
        (self.outdir / "summary.txt").write_text(text)
        return text


def commandstats(client: redis.Redis) -> dict[str, dict[str, float]]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): {"calls": float(v["calls"]), "usec": float(v["usec"])}
            for k, v in info.items() if isinstance(v, dict)}


def redis_summary(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> str:
    rows = []
    for cmd, v in after.items():
        b = before.get(cmd, {"calls": 0.0, "usec": 0.0})
        calls, usec = v["calls"] - b["calls"], v["usec"] - b["usec"]
        if calls > 0:
            rows.append((usec, calls, cmd))
    total = sum(r[0] for r in rows) or 1.0
    rows.sort(reverse=True)
    lines = [f"== redis-server: {total / 1000:.0f} ms inside commands (INFO commandstats; not the event loop, "
             "parsing or replies)", f"   {'share':>6} {'ms':>8} {'calls':>9} {'µs/call':>8}  command"]
    for usec, calls, cmd in rows[:12]:
        lines.append(f"   {usec * 100 / total:>5.1f}% {usec / 1000:>8.0f} {calls:>9.0f} {usec / calls:>8.1f}  {cmd}")
    return "\n".join(lines) + "\n"


def read_collapsed(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def function_of(frame: str) -> str:
    """`handle (callcenter_sip_edge/x.py:12)` -> `handle (callcenter_sip_edge/x.py)`: a function, not a line."""
    return _LINE.sub(")", frame)


# innermost frames that are a thread waiting (in epoll, on a lock or a queue), not working: py-spy counts
# a thread as busy when the kernel says it is runnable, which on a loaded machine includes these
WAITS = frozenset({"EpollSelector.select", "PollSelector.select", "Condition.wait", "Event.wait", "Queue.get",
                   "_worker", "Thread.join", "Lock.acquire", "sleep", "select", "poll"})


def is_wait(frame: str) -> bool:
    return frame.split(" (", 1)[0] in WAITS


def summary(name: str, stacks: Counter[tuple[str, ...]], top: int = 15) -> str:
    waits = sum(n for stack, n in stacks.items() if is_wait(stack[-1]))
    all_samples = sum(stacks.values())
    stacks = Counter({stack: n for stack, n in stacks.items() if not is_wait(stack[-1])})
    total = sum(stacks.values()) or 1
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for stack, n in stacks.items():
        funcs = [function_of(f) for f in stack if not f.startswith(("thread (", "process "))]
        if not funcs:
            continue
        self_c[funcs[-1]] += n
        for f in set(funcs):
            incl[f] += n
    threads: Counter[str] = Counter()
    for stack, n in stacks.items():
        threads[stack[0] if stack[0].startswith("thread (") else "?"] += n
    lines = [f"== {name}: {all_samples} samples at {PYSPY_RATE}/s, {waits} of them waiting (in epoll, on a lock "
             f"or a queue: left out); shares of the other {total}",
             "   threads: " + ", ".join(f"{t} {n * 100 / total:.0f}%" for t, n in threads.most_common(4)),
             "   top self (innermost frame), % of samples:"]
    lines += [f"   {n * 100 / total:>5.1f}%  {f}" for f, n in self_c.most_common(top)]
    lines.append("   top inclusive (anywhere on the stack), % of samples:")
    lines += [f"   {n * 100 / total:>5.1f}%  {f}" for f, n in incl.most_common(top + 10)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- the SVG
@dataclass
class _Node:
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def flame_svg(stacks: Counter[tuple[str, ...]], title: str, width: int = 1600, row: int = 16) -> str:
    """A flame graph (root at the bottom; width = share of samples; hover a box for its numbers)."""
    root = _Node()
    for stack, n in stacks.items():
        root.count += n
        node = root
        for frame in stack:
            node = node.children.setdefault(frame, _Node())
            node.count += n

    def depth(node: _Node) -> int:
        return 1 + max((depth(c) for c in node.children.values()), default=0)

    rows = depth(root)
    height = (rows + 2) * row
    total = root.count or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           f'font-size="11"><rect width="100%" height="100%" fill="#fff"/>',
           f'<text x="4" y="{row - 3}">{html.escape(title)}</text>']

    def draw(node: _Node, name: str, x: float, level: int) -> None:
        w = node.count * width / total
        if w < 0.3:
            return
        y = height - (level + 1) * row
        hue = 20 + zlib.crc32(function_of(name).encode()) % 40
        label = html.escape(name)
        share = node.count * 100 / total
        out.append(f'<g><title>{label} ({node.count} samples, {share:.2f}%)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="hsl({hue},85%,60%)"/>')
        chars = int(w / 7)
        if chars > 3:
            text = name if len(name) <= chars else name[:chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        cx = x
        for child_name, child in sorted(node.children.items()):
            draw(child, child_name, cx, level + 1)
            cx += child.count * width / total

    draw(root, "all", 0.0, 0)
    out.append("</svg>")
    return "\n".join(out)
