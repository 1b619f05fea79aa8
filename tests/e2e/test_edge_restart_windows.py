"""Windows of a call that the edge's dialog checkpoints did not cover, SIGKILL and restart at once.

- Callers whose INVITE the edge had not answered get a final response (500, Retry-After) from the
  restarted process, and each call a true record. The window: the welcome media server rings and
  never answers, so the caller has only 100/180 (it is answered with the first leg that answers its
  offer). Without the arrival checkpoint (`uas`) such a caller sat in "100 Trying" until its own
  timer (Timer C, minutes).
- An agent that answered into its flow-id message ("whisper") and hears it: the agent and the
  message's server get BYE from the restarted process (before: nothing, the agent stayed in a dead
  dialog until it hung up), the caller and its queue media too; the CDR says edge_restarted, the
  agent is free without a missed offer.
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
CALLERS = 12


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from restartable_edge_system(tmp_path_factory, "unans", lapse_ms=LAPSE_MS, heartbeat_ms=HEARTBEAT_MS)


def test_callers_not_answered_at_a_sigkill_get_a_final_response_from_the_restarted_edge(
        system: WholeSystem, peers: list[Sipp]) -> None:
    f = "unanswered"
    # a welcome media server that only rings: every caller stays unanswered (100, 180)
    welcome = Sipp(sip("agent_noanswer_uas.xml"), calls=CALLERS, timeout_s=60).start()
    queue = Sipp(scenario("media_queue.xml"), timeout_s=60).start()
    peers += [welcome, queue]
    system.provision(f, welcome, queue, {})
    callers = Sipp(sip("caller_expect_500_retry_after.xml"), remote=system.caller_target, service=f,
                   calls=CALLERS, rate=20, timeout_s=60).start()
    peers.append(callers)
    wait_for(lambda: len(system.call_ids_of_flow(f)) == CALLERS, 15, "every call arrived", system)
    call_ids = system.call_ids_of_flow(f)
    # the caller's INVITE is checkpointed with the arrival, the welcome's INVITE when it is sent
    wait_for(lambda: all(system.redis.hget(system.keys.dialog(c), "uas") is not None
                         and system.redis.hget(system.keys.dialog(c), "pending") is not None for c in call_ids),
             10, "every caller's INVITE and welcome INVITE checkpointed", system)
    uas = json.loads(system.redis.hget(system.keys.dialog(call_ids[0]), "uas"))
    assert uas["response"].startswith("SIP/2.0 1"), uas   # a provisional template: no final sent yet

    system.kill_edge()
    restarted = time.monotonic()
    system.restart_edge()

    # every caller got its 500 with a Retry-After and ACKed it (SIPp fails an unexpected message or
    # a missing header), well before any caller timer
    ok(callers, system)
    answered_s = time.monotonic() - restarted
    assert answered_s < 15, answered_s
    # every welcome INVITE got its CANCEL, and its 487 was ACKed
    ok(welcome, system)
    for call_id in call_ids:
        cdr = ended_by_the_restart(system, call_id, LAPSE_MS)
        assert cdr["outcome"] != "answered" and not cdr["talk_ms"], cdr
    assert sorted(system.call_ids_of_flow(f)) == sorted(call_ids)   # no INVITE made a second call
    assert "call.caller_answered_after_restart" in system.edge.log()
    assert "edge.lost" not in system.services["dispatcher"].log()
    assert not any(system.redis.exists(system.keys.dialog(c)) for c in call_ids)


def test_the_arrival_checkpoint_goes_once_the_caller_is_answered(system: WholeSystem, peers: list[Sipp]) -> None:
    """A caller answered by the queue media needs no answer from a restarted edge: `uas` is dropped
    when our 200 goes out (a 500 after the 200 would be a stray response to the caller)."""
    f = "answered"
    queue = Sipp(scenario("media_queue.xml"), timeout_s=30).start()
    peers.append(queue)
    _, call_id = caller_on_queue_media(system, peers, f, queue)
    assert system.redis.hget(system.keys.dialog(call_id), "legs") is not None
    assert system.redis.hget(system.keys.dialog(call_id), "uas") is None


def test_an_agent_hearing_its_flow_id_message_at_the_restart_gets_bye(system: WholeSystem, peers: list[Sipp]) -> None:
    f, agent_id = "whispering", "6001"
    queue = Sipp(scenario("media_queue.xml"), timeout_s=30).start()
    message = Sipp(sip("whisper_media_wait_bye_uas.xml"), timeout_s=30).start()   # plays until a BYE
    phone = Sipp(sip("agent_whisper_wait_bye_uas.xml"), timeout_s=30).start()    # answers, waits for a BYE
    peers += [queue, message, phone]
    caller, call_id = caller_on_queue_media(system, peers, f, queue)
    e2e_harness.flow(system, f, queue, flow_id_uri=f"sip:flowid@{message.uri_host};flow={f}")
    e2e_harness.agent(system, agent_id, f, phone)
    system.login(agent_id)

    def agent_hears_message() -> bool:
        legs = json.loads(system.redis.hget(system.keys.dialog(call_id), "legs") or "{}")
        return "agent_whisper" in legs and "message" in legs
    wait_for(agent_hears_message, 10, "the agent and its message checkpointed", system)

    system.kill_edge()
    system.restart_edge()

    # each of the four dialogs got its BYE from the new process and answered it
    for peer in (phone, message, caller, queue):
        ok(peer, system)
    ended_by_the_restart(system, call_id, LAPSE_MS)
    wait_for(lambda: system.agent_state(agent_id) == "free", 10, f"agent {agent_id} free", system)
    assert int(system.redis.hget(system.keys.agent(agent_id), "missed") or 0) == 0
    assert "edge.lost" not in system.services["dispatcher"].log()
    assert not system.redis.exists(system.keys.dialog(call_id))
