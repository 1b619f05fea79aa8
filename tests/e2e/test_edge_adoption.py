"""An edge SIGKILLed and restarted at once under the same id and port adopts the calls of the dead
process, with the whole system running as processes.

- Talking calls go on: the caller hangs up some, the agent others; the other side gets its BYE from
  the new process, every CDR says answered, by whom, with the talk time the peers saw; no agent is
  left in a call, none is declared lost (the new edge beats within the lapse).
- A call that was not talking (waiting on the queue media) is ended at once with a true record
  (reason `edge_restarted`), not left live; the caller and the queue media server get BYE.
- Nothing is left ringing: an agent (or each ring-all fork) ringing when the edge died gets a CANCEL
  from the new process (its INVITE sent again with the same branch first, RFC 3261 9.1); a phone
  whose 200 crosses the CANCEL gets ACK and BYE; the agents are free with no missed offer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import e2e_harness
import pytest
from e2e_harness import caller_on_queue_media, ended_by_the_restart, ok, restartable_edge_system, sip

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

LAPSE_MS = 4000
HEARTBEAT_MS = 500
TALK_MS = 8000
# the talk time a CDR may differ from what the peers played (ring, ACK, reports' clocks, load)
TALK_TOLERANCE_MS = 2500


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from restartable_edge_system(tmp_path_factory, "adopt", lapse_ms=LAPSE_MS, heartbeat_ms=HEARTBEAT_MS)


def talking_calls(system: WholeSystem, peers: list[Sipp], flow: str, agent_ids: list[str], *,
                  caller_scenario: str, agent_scenario: str) -> tuple[Sipp, list[Sipp]]:
    """len(agent_ids) callers of `flow`, each connected to its own agent phone."""
    # every caller is on the queue media before an agent rings for it (offer.lua waits_for_media)
    queue = Sipp(scenario("media_queue.xml"), calls=len(agent_ids), timeout_s=60).start()
    phones = {a: Sipp(scenario(agent_scenario), timeout_s=60, extra=["-d", str(TALK_MS)]).start() for a in agent_ids}
    peers += [queue, *phones.values()]
    system.provision(flow, None, queue, dict(phones))
    system.login(*agent_ids)
    callers = Sipp(scenario(caller_scenario), remote=system.caller_target, service=flow, calls=len(agent_ids),
                   rate=10, timeout_s=60, extra=["-d", str(TALK_MS)]).start()
    peers.append(callers)
    return callers, list(phones.values())


def checkpointed(system: WholeSystem, call_id: str) -> bool:
    """The edge has stored the call's dialogs (it reached talking)."""
    return system.redis.hget(system.keys.dialog(call_id), "legs") is not None


def test_talking_calls_survive_a_sigkill_and_end_by_either_side(system: WholeSystem, peers: list[Sipp]) -> None:
    by_caller = talking_calls(system, peers, "callerbye", ["5001", "5002"], caller_scenario="caller.xml",
                              agent_scenario="agent.xml")
    by_agent = talking_calls(system, peers, "agentbye", ["5003", "5004"],
                             caller_scenario="caller_waits_for_bye.xml", agent_scenario="agent_hangs_up.xml")
    agents = ["5001", "5002", "5003", "5004"]
    wait_for(lambda: all(system.agent_state(a) == "in_call" for a in agents), 15, "every agent in a call", system)
    calls = {flow: system.call_ids_of_flow(flow) for flow in ("callerbye", "agentbye")}
    assert [len(c) for c in calls.values()] == [2, 2], calls
    every_call = calls["callerbye"] + calls["agentbye"]
    wait_for(lambda: all(checkpointed(system, c) for c in every_call), 5, "every call checkpointed", system)

    system.kill_edge()
    killed_at = time.monotonic()
    system.restart_edge()

    # both sides of every call complete their scenario: the hang-up answered, the other side's BYE got
    for sipp in [by_caller[0], *by_caller[1], by_agent[0], *by_agent[1]]:
        ok(sipp, system)
    for flow, ended_by in (("callerbye", "caller"), ("agentbye", "agent")):
        for call_id in calls[flow]:
            cdr = system.wait_for_cdr(call_id)
            assert (cdr["outcome"], cdr["ended_by"]) == ("answered", ended_by), cdr
            assert abs(cdr["talk_ms"] - TALK_MS) <= TALK_TOLERANCE_MS, cdr
    for agent_id in agents:
        wait_for(lambda a=agent_id: system.agent_state(a) == "free", 10, f"agent {agent_id} free", system)
    assert "edge.lost" not in system.services["dispatcher"].log()
    assert "call.adopted" in system.edge.log()
    # nothing of the adopted calls is left in Redis once they ended
    assert not any(system.redis.exists(system.keys.dialog(c)) for c in every_call)
    assert time.monotonic() - killed_at < 60


def test_a_call_not_talking_at_the_restart_ends_with_a_true_record(system: WholeSystem,
                                                                  peers: list[Sipp]) -> None:
    queue = Sipp(scenario("media_queue.xml"), timeout_s=30).start()
    peers.append(queue)
    caller, call_id = caller_on_queue_media(system, peers, "waiting", queue)   # no agent: it waits

    system.kill_edge()
    system.restart_edge()

    ended_by_the_restart(system, call_id, LAPSE_MS)
    # both sides of the caller's session got their BYE from the new process
    ok(caller, system)
    ok(queue, system)
    assert "edge.lost" not in system.services["dispatcher"].log()
    assert not system.redis.sismember(system.keys.calls, call_id)
    assert not system.redis.exists(system.keys.dialog(call_id))


@pytest.mark.parametrize(("agent_id", "phone_scenario"), [
    ("5101", "agent_noanswer_uas.xml"),            # CANCEL: 200, then 487, which must be ACKed
    ("5102", "agent_answers_across_cancel_uas.xml"),   # its 200 crosses the CANCEL: ACK, then BYE
])
def test_an_agent_ringing_at_the_restart_is_cancelled_and_freed_without_penalty(
        system: WholeSystem, peers: list[Sipp], agent_id: str, phone_scenario: str) -> None:
    flow = f"ringing{agent_id}"
    queue = Sipp(scenario("media_queue.xml"), timeout_s=30).start()
    phone = Sipp(sip(phone_scenario), timeout_s=30).start()
    peers += [queue, phone]
    caller, call_id = caller_on_queue_media(system, peers, flow, queue)
    # the agent comes in once the caller hears the queue media: its INVITE goes out without SDP
    system.provision(flow, None, queue, {agent_id: phone})
    system.login(agent_id)
    wait_for(lambda: system.agent_state(agent_id) == "ringing", 10, "the agent ringing", system)
    # the agent's INVITE is checkpointed when it is sent (a few ms after the dispatcher's offer)
    wait_for(lambda: system.redis.hget(system.keys.dialog(call_id), "pending") is not None, 5,
             "the agent's INVITE checkpointed", system)

    system.kill_edge()
    system.restart_edge()

    # the phone completes its scenario: it got a CANCEL (within its 10 s), and its 487 was ACKed or
    # its 200 ACKed and hung up with BYE: nothing left ringing, no dialog left open
    ok(phone, system)
    ended_by_the_restart(system, call_id, LAPSE_MS)
    ok(caller, system)
    ok(queue, system)
    wait_for(lambda: system.agent_state(agent_id) == "free", 10, f"agent {agent_id} free", system)
    # freed without penalty: no missed offer counted against the agent
    assert int(system.redis.hget(system.keys.agent(agent_id), "missed") or 0) == 0
    assert "call.invite_cancelled" in system.edge.log()
    assert "edge.lost" not in system.services["dispatcher"].log()
    assert not system.redis.exists(system.keys.dialog(call_id))


def test_ring_all_forks_ringing_at_the_restart_are_all_cancelled(system: WholeSystem, peers: list[Sipp]) -> None:
    f = "forks"
    queue = Sipp(scenario("media_queue.xml"), timeout_s=30).start()
    phones = {a: Sipp(sip("agent_noanswer_uas.xml"), timeout_s=30).start() for a in ("5201", "5202")}
    peers += [queue, *phones.values()]
    caller, call_id = caller_on_queue_media(system, peers, f, queue)
    e2e_harness.flow(system, f, queue, strategy="ring-all")
    for agent_id, phone in phones.items():
        e2e_harness.agent(system, agent_id, f, phone)
    system.login(*phones)
    wait_for(lambda: len(json.loads(system.redis.hget(system.keys.dialog(call_id), "pending") or "[]")) == 2, 10,
             "both forks' INVITEs checkpointed", system)

    system.kill_edge()
    system.restart_edge()

    for phone in phones.values():   # each got its CANCEL and its 487 was ACKed
        ok(phone, system)
    ended_by_the_restart(system, call_id, LAPSE_MS)
    ok(caller, system)
    for agent_id in phones:
        wait_for(lambda a=agent_id: system.agent_state(a) == "free", 10, f"agent {agent_id} free", system)
        assert int(system.redis.hget(system.keys.agent(agent_id), "missed") or 0) == 0


def test_a_media_leg_being_set_up_at_the_restart_is_cancelled(system: WholeSystem, peers: list[Sipp]) -> None:
    f = "settingup"
    welcome = Sipp(sip("agent_noanswer_uas.xml"), timeout_s=30).start()   # a media server that only rings
    queue = Sipp(scenario("media_queue.xml"), timeout_s=30).start()
    peers += [welcome, queue]
    system.provision(f, welcome, queue, {})
    # the caller is not answered yet (the welcome has its offer): the new process answers it 500
    # (test_edge_restart_windows.py)
    caller = Sipp(scenario("caller_waits_for_bye.xml"), remote=system.caller_target, service=f, timeout_s=30).start()
    peers.append(caller)
    wait_for(lambda: len(system.call_ids_of_flow(f)) == 1, 10, "the call arrived", system)
    [call_id] = system.call_ids_of_flow(f)
    wait_for(lambda: system.redis.hget(system.keys.dialog(call_id), "pending") is not None, 10,
             "the welcome INVITE checkpointed", system)

    system.kill_edge()
    system.restart_edge()

    ok(welcome, system)   # CANCEL, its 487 ACKed
    ended_by_the_restart(system, call_id, LAPSE_MS)
    assert system.call_ids_of_flow(f) == [call_id]   # the caller's INVITE made no second call
