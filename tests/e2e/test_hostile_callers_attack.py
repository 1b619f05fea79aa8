"""The dozen-unanswered-INVITEs attack (issue 10, item 1), replayed on the whole system beside real
SIPp calls: callers that never ACK our 200 and callers that ACK but never answer the re-INVITE that
moves them to the agent; and with them the hostile requests of the SIP fuzz test (acceptance 8): a
merged request (the same INVITE on a second branch), a repeated Call-ID, header injection, an
over-long Request-URI. With `max_no_answer=1`, no agent may end up paused or busy, the bad calls'
CDRs say what the caller did, and real callers reach an agent about as fast as without the attack
(measured in the same test: first without, then with it).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest
from e2e_harness import agent, caller, flow, ok, start, whole_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

RING_TIMEOUT_S = 10
AGENTS = [f"a{n}" for n in range(1, 9)]
REAL_CALLS = 8
REAL_RATE = 2.0          # calls per second
NO_ACK_CALLERS = 12
NO_ANSWER_CALLERS = 4
# real callers' time-to-agent: the attack raised it from 0.55 s to 12 s; a loaded 2-core machine
# may add a second or two to both runs
P95_BOUND_MS = 3_000 + 1_000  # the phones answer after 1 s (agent.xml)
SLOWER_THAN_BASELINE_MS = 2_000


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from whole_system(tmp_path_factory, "hostile", RING_TIMEOUT_S)


def p95(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def connected_waits(system: WholeSystem, since: int) -> list[int]:
    """time-to-agent (`call.connected` wait_ms) of the calls connected after event index `since`"""
    return [d["wait_ms"] for t, d in system.events()[since:] if t == "call.connected"]


def _invite(system: WholeSystem, port: int, user: str, call_id: str, extra: str = "") -> bytes:
    host, edge_port = system.caller_target.split(":")
    lines = [f"INVITE sip:{user}@{host}:{edge_port} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{os.urandom(4).hex()};rport",
             f"From: <sip:hostile@127.0.0.1:{port}>;tag=h{call_id}", f"To: <sip:{user}@{host}:{edge_port}>",
             f"Call-ID: {call_id}", "CSeq: 1 INVITE", f"Contact: <sip:hostile@127.0.0.1:{port}>",
             "Max-Forwards: 70", *([extra] if extra else []), "Content-Type: application/sdp"]
    sdp = "v=0\r\no=h 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    return ("\r\n".join([*lines, f"Content-Length: {len(sdp)}", "", sdp])).encode()


class HostileRequests:
    """The fuzz test's hostile requests, from one socket that never ACKs and answers BYE with 200:
    a merged request (one call; its first INVITE is answered by the queue media and never ACKed),
    a repeated Call-ID and a header with a bare CR (400), an over-long Request-URI (refused), and a
    JSON object in a header (a call like any other, never ACKed). Returns the calls they make."""

    CALLS = 2   # the merged request's first INVITE, the JSON header's

    def __init__(self, system: WholeSystem, line: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.replies: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        port = self.sock.getsockname()[1]
        merged = _invite(system, port, line, "merged-1")
        host, edge_port = system.caller_target.split(":")
        self.target = (host, int(edge_port))
        self.datagrams = [
            merged, merged.replace(b";branch=z9hG4bK-", b";branch=z9hG4bK-2nd", 1),
            _invite(system, port, line, "dup-call-id", "Call-ID: other"),
            _invite(system, port, line, "bare-cr", "X-Note: a\rX-Injected: 1"),
            _invite(system, port, line, "json", 'X-Note: {"event": "agent.paused", "agent_id": "a1"}'),
            _invite(system, port, "s" * 3600, "long-uri"),
        ]

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                message = self.sock.recv(65535).decode(errors="replace")
            except TimeoutError:
                continue
            self.replies.append(message.split("\r\n", 1)[0])
            if message.startswith("BYE "):
                head = [ln for ln in message.split("\r\n")
                        if ln.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
                self.sock.sendto("\r\n".join(["SIP/2.0 200 OK", *head, "Content-Length: 0", "", ""]).encode(),
                                 self.target)

    def send(self) -> None:
        self.reader.start()
        for datagram in self.datagrams:
            self.sock.sendto(datagram, self.target)

    def close(self) -> None:
        self.stop.set()
        self.reader.join(5)
        self.sock.close()


def real_calls(system: WholeSystem, peers: list[Sipp], line: str) -> Sipp:
    return start(peers, caller(system, "caller.xml", line, pause_ms=500, calls=REAL_CALLS, rate=REAL_RATE,
                               timeout_s=60))


def test_hostile_callers_cost_no_agent_and_blame_none(system: WholeSystem, peers: list[Sipp]) -> None:
    line = "hostile-line"
    assert system.api.patch("/v1/config", json={"max_no_answer": 1}).status_code == 200
    queue = start(peers, Sipp(scenario("media_queue.xml"), calls=200, timeout_s=120))
    phones = start(peers, Sipp(scenario("agent.xml"), calls=200, timeout_s=120))
    flow(system, line, queue)   # no welcome: a caller is answered by the queue media first
    for agent_id in AGENTS:
        agent(system, agent_id, line, f"sip:{agent_id}@{phones.uri_host}")
    system.login(*AGENTS)

    # without the attack
    before = len(system.events())
    ok(real_calls(system, peers, line), system)
    wait_for(lambda: len(connected_waits(system, before)) == REAL_CALLS, 20, "the first real calls", system)
    baseline = connected_waits(system, before)

    # with it: the bad callers first, the real ones while they are at it
    before = len(system.events())
    no_ack = start(peers, caller(system, "caller_never_acks.xml", line, calls=NO_ACK_CALLERS, rate=4,
                                 timeout_s=60))
    no_answer = start(peers, caller(system, "caller_never_answers_reinvite.xml", line, calls=NO_ANSWER_CALLERS,
                                    rate=2, timeout_s=60))
    hostile = HostileRequests(system, line)
    try:
        hostile.send()
        real = real_calls(system, peers, line)
        for peer in (real, no_ack, no_answer):
            ok(peer, system)
        wait_for(lambda: len(connected_waits(system, before)) == REAL_CALLS, 20, "the real calls under attack",
                 system)
        attacked = connected_waits(system, before)
        bad_calls = NO_ACK_CALLERS + NO_ANSWER_CALLERS + HostileRequests.CALLS

        def failed() -> list[dict[str, object]]:
            return [d for t, d in system.events()[before:] if t == "call.ended" and d["outcome"] != "answered"]

        wait_for(lambda: len(failed()) >= bad_calls, 20, "the hostile calls ended", system)
    finally:
        hostile.close()
    reasons = [d["reason"] for d in failed()]
    assert sorted(reasons) == sorted(["caller_no_ack"] * (NO_ACK_CALLERS + HostileRequests.CALLS)
                                     + ["caller_reinvite_timeout"] * NO_ANSWER_CALLERS), failed()
    # the merged request's second branch got 482, the repeated Call-ID and the bare CR 400, the
    # over-long Request-URI a 4xx; none of them made a call (each final response may come again:
    # this socket never ACKs it)
    finals = {r for r in hostile.replies if r.startswith("SIP/2.0 4")}
    assert {"SIP/2.0 482 Loop Detected", "SIP/2.0 400 Bad Request - Repeated Call-ID",
            "SIP/2.0 400 Bad Request - Bare CR"} < finals, finals
    assert all(d["ended_by"] == "edge" and d["outcome"] == "failed" for d in failed())
    # nobody was blamed: no pause, no missed offer, every agent free again once the calls are over
    assert [d for t, d in system.events() if t == "agent.paused"] == []
    assert wait_until(lambda: all(system.agent_state(a) == "free" for a in AGENTS), 15), \
        {a: system.agent_state(a) for a in AGENTS}
    for agent_id in AGENTS:
        assert int(system.redis.hget(system.keys.agent(agent_id), "missed") or 0) == 0, agent_id
    # real callers reach an agent about as fast as without the attack
    assert p95(attacked) < P95_BOUND_MS, (baseline, attacked)
    assert p95(attacked) <= p95(baseline) + SLOWER_THAN_BASELINE_MS, (baseline, attacked)
