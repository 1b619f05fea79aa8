"""The issue-15 instrument (bench/stock_calls.py) tested on the whole system at a low rate.

Its stock-style SIPp peers (bench/sipp/stock/: a uac-style caller that takes one re-INVITE, a welcome
UAS run with -nr, a queue UAS, one SIPp answering every agent URI) complete calls through every
service (every service reaching Redis by its Unix socket, as the bench runs them), and the step's
accounting sees them: answered, CDRs written, time to agent, CPU per service.
Then a real retransmission: the welcome SIPp is frozen (SIGSTOP) while the edge's INVITEs reach it,
so the edge retransmits them; when it wakes, the duplicate INVITE is an unexpected message, and the
step must count a failed call and report the rate as not clean, not answer it quietly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callcenter_dev.system import WholeSystem, redis_topology_under_test

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import stock_calls  # noqa: E402  (bench/ is not a package: its scripts import each other by path)

pytestmark = pytest.mark.slow
AGENTS = 20


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WholeSystem, stock_calls.Peers, Path]]:
    workdir = tmp_path_factory.mktemp("stock")
    # the services reach Redis by its Unix socket, as the bench's default (and the demo) has them
    # (on a cluster or sentinel topology, CC_TEST_REDIS, by TCP: those have no single socket)
    system = WholeSystem.start(workdir, tenant="bench", edge_id="edge-stock",
                               redis_unix_socket=redis_topology_under_test() == "single",
                               common_env={"CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "10"},
                               edge_env={"CC_SIP_INVITE_RATE": "0", "CC_SIP_INVITE_RATE_TOTAL": "0"})
    peers = stock_calls.start_peers(workdir, total_s=300)
    try:
        stock_calls.provision(system, peers, stock_calls.FLOW, [f"s{n:02d}" for n in range(AGENTS)])
        yield system, peers, workdir
    finally:
        peers.stop()
        system.stop()


def test_stock_peers_complete_calls_and_the_step_counts_them(
        rig: tuple[WholeSystem, stock_calls.Peers, Path]) -> None:
    system, peers, workdir = rig
    step = stock_calls.run_step(system, peers, workdir, rate=3, calls=9, drain_s=40)
    stock_calls.print_step(step)
    assert step.answered == 9 and step.failed == 0, (step, peers.welcome.errors(), system.logs())
    assert step.retransmissions == 0 and step.late == 0 and step.drained and step.clean, step
    assert step.peers["welcome"].success == 9 and step.peers["agents"].success == 9, step.peers
    assert step.peers["queue"].created == 0  # 20 agents for 9 calls: nobody waited in the queue
    assert step.cdrs == 9 and len(step.waits_ms) == 9
    # the CDR's wait covers the 1 s welcome, then the agent's 180/200 on loopback
    assert 1000 <= stock_calls.pct(step.waits_ms, 0.5) < 3000, step.waits_ms
    # the bench reads one redis-server's CPU: on a cluster or sentinel topology (CC_TEST_REDIS) there
    # are several, and it leaves redis-server out
    measured = set(stock_calls.SERVICES) - (set() if redis_topology_under_test() == "single" else {"redis-server"})
    assert set(step.cpu_s) == measured and step.cpu_s["sip-edge"] > 0, step.cpu_s


def test_an_unexpected_retransmission_at_the_welcome_fails_the_call(
        rig: tuple[WholeSystem, stock_calls.Peers, Path]) -> None:
    system, peers, workdir = rig

    def freeze_welcome(p: stock_calls.Peers) -> None:
        time.sleep(0.8)
        stock_calls.pause_peer(p.welcome, 1.6)  # INVITEs wait in its socket; the edge retransmits at 0.5 s, 1.5 s

    # the calls the welcome failed stay unanswered at the caller and live until the edge gives up on
    # them, which none of the assertions below waits for: the caller's global timeout (10 s past the
    # last INVITE) covers the answered calls (1 s welcome, up to 1.6 s frozen, 2 s talk), and the
    # drain is cut short (5 s) since it cannot complete
    step = stock_calls.run_step(system, peers, workdir, rate=4, calls=10, drain_s=5, fault=freeze_welcome,
                                 caller_timeout_s=10)
    stock_calls.print_step(step)
    welcome = step.peers["welcome"]
    assert welcome.unexpected >= 1 and welcome.failed >= 1, (welcome, peers.welcome.errors())
    assert step.peers_failed >= 1 and not step.clean, step
