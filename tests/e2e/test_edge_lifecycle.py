"""A sip-edge that dies (SIGKILL) or drains (SIGTERM), with the whole system running as processes.

- SIGKILL mid-call: nobody hangs up, the heartbeat stops; the dispatcher notices the lapse
  (CC_EDGE_LAPSE_MS), ends the call (CDR: failed, system, edge_lost) and frees the agent.
- SIGSTOP past the lapse (the edge cut off, Redis fine for everybody else): the dispatcher ends the
  call (edge_lost, talk time up to the last heartbeat); after SIGCONT the edge's next beat tells it,
  and it sends both sides the BYE nobody had sent, once, with no second record.
- SIGTERM with a call up: new INVITEs get 503 + Retry-After, the call goes on until
  CC_DRAIN_TIMEOUT_S, then both sides get BYE, the CDR is written and the process exits 0.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from e2e_harness import started_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

LAPSE_MS = 2000
DRAIN_S = 3


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from started_system(tmp_path_factory, "life",
                              common_env={"CC_EDGE_LAPSE_MS": str(LAPSE_MS)},   # the dispatcher's and the id lease's
                              edge_env={"CC_DRAIN_TIMEOUT_S": str(DRAIN_S)})


def connect_one_call(system: WholeSystem, peers: list[Sipp], flow: str, agent_id: str,
                     caller_scenario: str = "caller_waits_for_bye.xml") -> tuple[str, Sipp, Sipp]:
    """A caller connected to a logged-in agent (no welcome: the free agent gets the call at once)."""
    queue = Sipp(scenario("media_queue.xml")).start()
    phone = Sipp(scenario("agent.xml"), timeout_s=60).start()
    peers += [queue, phone]
    system.provision(flow, None, queue, {agent_id: phone})
    system.login(agent_id)
    caller = Sipp(scenario(caller_scenario), remote=system.caller_target, service=flow, timeout_s=60).start()
    peers.append(caller)
    wait_for(lambda: system.agent_state(agent_id) == "in_call", 10, "the agent in the call", system)
    [call_id] = system.call_ids_of_flow(flow)
    return call_id, caller, phone


def beat_after_connect(system: WholeSystem, call_id: str) -> bool:
    connected = system.redis.hget(system.keys.call(call_id), "connected_ms")
    beat = system.redis.zscore(system.keys.edges, system.edge_id)
    return connected is not None and beat is not None and beat > int(connected)


def test_sigkilled_edge_its_call_ends_with_edge_lost_and_the_agent_is_freed(
        system: WholeSystem, peers: list[Sipp]) -> None:
    call_id, _caller, _phone = connect_one_call(system, peers, "lost", "3001")
    assert system.redis.sismember(system.keys.edge_calls(system.edge_id), call_id)
    # a CDR of a lost edge counts the talk up to its last heartbeat: let one vouch for the talk
    wait_for(lambda: beat_after_connect(system, call_id), 5, "a heartbeat after the connection", system)

    killed_at = time.monotonic()
    system.kill_edge()
    cdr = system.wait_for_cdr(call_id, timeout=LAPSE_MS / 1000 + 8)
    noticed_s = time.monotonic() - killed_at
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "system", "edge_lost"), cdr
    assert cdr["agent_id"] == "3001" and cdr["talk_ms"] > 0
    assert LAPSE_MS / 1000 - 1.5 <= noticed_s <= LAPSE_MS / 1000 + 4, noticed_s
    # the agent had talked: wrap-up (1 s), then free
    assert system.agent_state("3001") in ("wrap_up", "free")
    wait_for(lambda: system.agent_state("3001") == "free", 5, "the agent free again", system)
    assert system.redis.zscore(system.keys.edges, system.edge_id) is None
    assert not system.redis.sismember(system.keys.calls, call_id)
    assert "edge.lost" in system.services["dispatcher"].log()

    # the edge comes back under the same id and takes calls again
    system.restart_edge()
    assert wait_until(lambda: system.redis.zscore(system.keys.edges, system.edge_id) is not None, 5)
    assert system.api.post("/v1/agents/3001/logout").status_code == 200


def test_sigterm_drains_503_for_new_calls_then_hangs_up_at_the_deadline(
        system: WholeSystem, peers: list[Sipp]) -> None:
    call_id, caller, phone = connect_one_call(system, peers, "drain", "3002")
    edge = system.edge
    assert edge.proc is not None
    term_at = time.monotonic()
    edge.proc.terminate()  # SIGTERM

    # a new INVITE is turned away with 503 and Retry-After while the call goes on
    assert wait_until(lambda: "edge.draining" in edge.log(), 5), edge.log()
    newcomer = Sipp(scenario("caller_expect_503.xml"), remote=system.caller_target, service="drain").start()
    peers.append(newcomer)
    assert newcomer.wait() == 0, newcomer.errors() + system.logs()
    log_line = newcomer.scenario_log()
    assert "retry_after=" in log_line and "retry_after=]" not in log_line, log_line
    assert caller.running() and phone.running()
    assert system.agent_state("3002") == "in_call"

    # at the deadline both sides get BYE (the SIPp scenarios end with success on it)
    assert caller.wait(DRAIN_S + 15) == 0, caller.errors() + system.logs()
    assert phone.wait(10) == 0, phone.errors()
    assert edge.proc.wait(15) == 0, edge.log()
    drained_s = time.monotonic() - term_at
    assert DRAIN_S - 0.5 <= drained_s <= DRAIN_S + 8, drained_s

    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("answered", "edge", "edge_shutdown"), cdr
    assert cdr["talk_ms"] >= (DRAIN_S - 0.5) * 1000
    wait_for(lambda: system.agent_state("3002") in ("wrap_up", "free"), 5, "the agent released", system)
    # a clean exit removes the heartbeat: the dispatcher has nothing to end for this edge
    assert system.redis.zscore(system.keys.edges, system.edge_id) is None
    assert system.redis.scard(system.keys.edge_calls(system.edge_id)) == 0
    system.restart_edge()
    assert system.api.post("/v1/agents/3002/logout").status_code == 200


def test_an_edge_stopped_past_the_lapse_learns_it_was_lost_and_hangs_up_what_was_ended(
        system: WholeSystem, peers: list[Sipp]) -> None:
    call_id, caller, phone = connect_one_call(system, peers, "stopped", "3005")
    wait_for(lambda: beat_after_connect(system, call_id), 5, "a heartbeat after the connection", system)
    edge = system.edge
    assert edge.proc is not None
    os.kill(edge.proc.pid, signal.SIGSTOP)
    try:
        cdr = system.wait_for_cdr(call_id, timeout=LAPSE_MS / 1000 + 8)
        assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "system", "edge_lost"), cdr
        assert cdr["talk_ms"] > 0
        wait_for(lambda: system.agent_state("3005") != "in_call", 5, "the agent released", system)
        # nobody has hung up the caller and the agent yet: only the edge speaks SIP to them
        assert caller.running() and phone.running()
    finally:
        os.kill(edge.proc.pid, signal.SIGCONT)

    # its next beat tells it; both sides get their BYE (the scenarios end on it) from the edge
    assert caller.wait(15) == 0, caller.errors() + system.logs()
    assert phone.wait(10) == 0, phone.errors() + system.logs()
    assert "edge.declared_lost" in edge.log() and "call.disowned" in edge.log()
    # one record: the edge's own call_ended for the call changed nothing
    time.sleep(0.5)   # let its report be applied (or not) before counting
    assert [t for t, _ in system.events(call_id)].count("call.ended") == 1
    # the edge goes on serving under its id
    assert edge.proc.poll() is None
    assert wait_until(lambda: system.redis.zscore(system.keys.edges, system.edge_id) is not None, 5)
    assert system.api.post("/v1/agents/3005/logout").status_code == 200
