"""Test harness for the SIP edge: free loopback ports, bounded SIPp processes, a scripted dispatcher.

Reads: the SIPp scenarios in tests/sipp/. Writes: SIPp traces under the directory it is given.
Every SIPp process runs with -m 1, -timeout and an outer `timeout`, on 127.0.0.1 only.
(A module with its own name, not conftest, so test modules can import it unambiguously.)
"""

from __future__ import annotations

import asyncio
import errno
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "tests" / "sipp"

from sip_grammar import header_problems  # noqa: E402

from callcenter_dev.servers import free_port, stop_process, udp_port_bound  # noqa: E402
from callcenter_sip_edge.facts import CHECKPOINT_KIND, Fact  # noqa: E402
from callcenter_sip_edge.sip_stack import SipStack  # noqa: E402

LOOPBACK = "127.0.0.1"
SIPP_TIMEOUT_S = 20
SIPP_HARD_LIMIT_S = SIPP_TIMEOUT_S + 10

SIPP_INSTALLED = shutil.which("sipp") is not None


# ---------------------------------------------------------------------------- ports
def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to now (never 5060, never handed out twice;
    drawn below the kernel's ephemeral range: callcenter_dev.servers.free_port)."""
    return free_port(socket.SOCK_DGRAM)


# ---------------------------------------------------------------------------- SIPp
@dataclass
class SippProcess:
    """One bounded SIPp process (one call) and its trace files."""

    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    returncode: int | None = None

    def uri(self, user: str, params: str = "") -> str:
        return f"sip:{user}@{LOOPBACK}:{self.port}{params}"

    def running(self) -> bool:
        return self.proc.poll() is None

    async def finish(self, timeout_s: float = SIPP_HARD_LIMIT_S) -> int:
        """Wait for SIPp to exit; its exit code (0 = every call succeeded)."""
        try:
            self.returncode = await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            self.returncode = -9
        return self.returncode

    def stop(self) -> None:
        stop_process(self.proc)

    def traces(self, kind: str = "messages") -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob(f"*_{kind}.log")))

    def messages(self) -> list[SipMessage]:
        """Every SIP message this SIPp sent or received, in order, with SIPp's timestamps (from
        -trace_msg), so that tests can order what several peers saw."""
        return parse_message_trace(self.traces("messages"))

    def diagnostics(self) -> str:
        out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
        return (f"--- sipp {self.name} rc={self.returncode}\n{out[-2000:]}\n--- errors\n"
                f"{self.traces('errors')[-3000:]}\n--- messages\n{self.traces('messages')[-6000:]}")


@dataclass(frozen=True)
class SipMessage:
    at: datetime
    sent: bool
    text: str
    size: int   # the datagram's length in bytes, as SIPp counted it

    @property
    def start_line(self) -> str:
        return self.text.strip().splitlines()[0] if self.text.strip() else ""

    @property
    def body(self) -> str:
        return self.text.replace("\r\n", "\n").partition("\n\n")[2]

    def is_request(self, method: str) -> bool:
        return self.start_line.startswith(f"{method} ")

    def is_response(self, code: int, method: str) -> bool:
        return self.start_line.startswith(f"SIP/2.0 {code} ") and re.search(
            rf"^CSeq:\s*\d+\s+{method}\s*$", self.text, re.MULTILINE | re.IGNORECASE) is not None


_TRACE_SEPARATOR = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s*$", re.MULTILINE)
# 'UDP message sent (531 bytes):' or 'UDP message received [249] bytes :'
_TRACE_SIZE = re.compile(r"[(\[](\d+)[\])]? bytes")


def parse_message_trace(trace: str) -> list[SipMessage]:
    """Split SIPp's -trace_msg log into messages: '---- <timestamp>', 'UDP message sent|received ...', message."""
    parts = _TRACE_SEPARATOR.split(trace)
    messages = []
    for stamp, chunk in zip(parts[1::2], parts[2::2], strict=True):
        header, _, text = chunk.strip("\n").partition("\n")
        size = _TRACE_SIZE.search(header)
        messages.append(SipMessage(at=datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f"),
                                   sent=" sent " in header, text=text.strip("\n"),
                                   size=int(size.group(1)) if size else -1))
    return messages


def sipp_command(options: list[str], port: int, *, service: str | None, pause_ms: int | None,
                 remote_port: int | None, calls: int = 1) -> list[str]:
    """A bounded SIPp command line for `calls` calls on `port` with `options` (the scenario and more)."""
    cmd = ["timeout", "-k", "5", str(SIPP_HARD_LIMIT_S), "sipp", *options,
           "-i", LOOPBACK, "-p", str(port), "-m", str(calls), "-timeout", f"{SIPP_TIMEOUT_S}s", "-timeout_error",
           "-nostdin", "-trace_err", "-trace_msg", "-recv_timeout", "15000"]
    if service is not None:
        cmd += ["-s", service]
    if pause_ms is not None:
        cmd += ["-d", str(pause_ms)]
    if remote_port is not None:
        cmd.append(f"{LOOPBACK}:{remote_port}")
    return cmd


@dataclass
class SippLauncher:
    tmp_path: Path
    started: list[SippProcess] = field(default_factory=list)

    def start(self, scenario: str, *, name: str | None = None, remote_port: int | None = None,
              service: str | None = None, pause_ms: int | None = None, wait_bound: bool = True,
              stock: bool = False, calls: int = 1) -> SippProcess:
        """Start SIPp with scenario tests/sipp/<scenario>.xml (with stock=True: SIPp's built-in
        scenario of that name, `-sn`) for exactly `calls` calls (a UAS takes them side by side)."""
        name = name or scenario
        port = free_udp_port()
        workdir = self.tmp_path / f"sipp-{name}"
        workdir.mkdir(parents=True, exist_ok=True)
        chosen = ["-sn", scenario] if stock else ["-sf", str(SCENARIOS / f"{scenario}.xml")]
        cmd = sipp_command([*chosen, "-buff_size", "4194304"], port, service=service, pause_ms=pause_ms,
                           remote_port=remote_port, calls=calls)
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        sipp = SippProcess(name=name, port=port, workdir=workdir, proc=proc)
        self.started.append(sipp)
        if wait_bound and remote_port is None:
            deadline = time.monotonic() + 5
            while not udp_port_bound(port) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
        return sipp

    def stop_all(self) -> None:
        for sipp in self.started:
            sipp.stop()


def edge_sent_problems(*peers: SippProcess) -> list[str]:
    """RFC 3261 grammar problems (sip_grammar.header_problems) in every message the peers received,
    all of them sent by the edge, each named by peer and start line; asserts that there were
    messages to check."""
    received = [(peer.name, m) for peer in peers for m in peer.messages() if not m.sent]
    assert received, "the peers received nothing"
    return [f"{name} got {message.start_line!r}: {problem}"
            for name, message in received for problem in header_problems(message.text, message.size)]


async def expect_success(*processes: SippProcess) -> None:
    """Wait for every SIPp and assert it exited with 0 (all calls successful)."""
    codes = await asyncio.gather(*(p.finish() for p in processes))
    failed = [p for p, code in zip(processes, codes, strict=True) if code != 0]
    assert not failed, "\n".join(p.diagnostics() for p in failed)


# ---------------------------------------------------------------------------- scripted dispatcher
@dataclass
class _Reaction:
    kind: str
    match: dict[str, Any]
    action: Callable[[Fact], None]
    once: bool


class ScriptedDispatcher:
    """Plays the dispatcher's role: records facts, reacts to them with SipStack commands."""

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self.checkpoints: list[Fact] = []   # the edge's dialog checkpoints: stored, never reported
        self._reactions: list[_Reaction] = []
        self._changed = asyncio.Event()

    def on(self, kind: str, action: Callable[[Fact], None], *, once: bool = True, **match: Any) -> None:
        """React to the next fact of `kind` whose data contains `match` (every one if once=False)."""
        self._reactions.append(_Reaction(kind, match, action, once))

    def on_fact(self, fact: Fact) -> None:
        if fact.kind == CHECKPOINT_KIND:
            self.checkpoints.append(fact)
            return
        self.facts.append(fact)
        for reaction in list(self._reactions):
            if reaction.kind == fact.kind and all(fact.data.get(k) == v for k, v in reaction.match.items()):
                if reaction.once:
                    self._reactions.remove(reaction)
                reaction.action(fact)
                break
        self._changed.set()

    async def wait_for(self, kind: str, timeout_s: float = 20.0, **match: Any) -> Fact:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            for fact in self.facts:
                if fact.kind == kind and all(fact.data.get(k) == v for k, v in match.items()):
                    return fact
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no {kind} {match} within {timeout_s}s; facts: {self.summary()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def kinds(self) -> list[str]:
        return [f.kind for f in self.facts]

    def summary(self) -> list[tuple[str, dict[str, Any]]]:
        return [(f.kind, f.data) for f in self.facts]


@dataclass
class EdgeUnderTest:
    stack: SipStack
    dispatcher: ScriptedDispatcher
    port: int


def support_caller(sipp: SippLauncher, edge: EdgeUnderTest, scenario: str, pause_ms: int | None = 500
                   ) -> SippProcess:
    """SIPp with `scenario`, named "caller", calling the edge's `support` service (`pause_ms`: its
    pause, SIPp's [pause] in the scenario; None: SIPp's default)."""
    return sipp.start(scenario, name="caller", remote_port=edge.port, service="support", pause_ms=pause_ms)


def agent_at_once(edge: EdgeUnderTest, sipp: SippLauncher, agent_scenario: str) -> SippProcess:
    """The dispatcher's shortest path, scripted: the next call that arrives rings an agent
    (`agent_scenario`, named "agent") at once. Returns the agent."""
    agent = sipp.start(agent_scenario, name="agent")
    edge.dispatcher.on("call_arrived",
                       lambda f: edge.stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
    return agent


def started_stack(dispatcher: ScriptedDispatcher, **options: Any) -> tuple[SipStack, int]:
    """A SipStack with `options`, started on a free loopback port, its facts to `dispatcher`; and
    the port. Another process on this shared machine may bind the port between the probe and the
    edge's bind (the edge shares no port: no SO_REUSEADDR): then it takes another, three times."""
    for attempt in range(3):
        port = free_udp_port()
        stack = SipStack(host=LOOPBACK, port=port, on_fact=dispatcher.on_fact, loop=asyncio.get_running_loop(),
                         **options)
        try:
            stack.start()
            return stack, port
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == 2:
                raise
    raise AssertionError("not reached")


def queue_then_agent(edge: EdgeUnderTest, sipp: SippLauncher, agent_scenario: str, *, calls: int = 1,
                     **match: Any) -> tuple[SippProcess, SippProcess]:
    """The dispatcher's usual path, scripted: a call that arrives (with `match` in its data) gets the
    queue media (media_hold_uas), and once it is on it an agent (`agent_scenario`) is rung for it;
    for `calls` calls. Returns (queue media, agent)."""
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music", calls=calls)
    agent = sipp.start(agent_scenario, name="agent", calls=calls)
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"), once=calls == 1,
                  **match)
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0),
                  once=calls == 1)
    return music, agent
