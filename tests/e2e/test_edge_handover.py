"""An edge that does not come back, with a peer of its address group (CC_EDGE_GROUP) on its SIP
address: the peer adopts its calls, with the whole system running as processes.

The documented deployment is two edges behind one advertised address (an SBC, a floating IP). Here
the address moves as a floating IP does: the lost edge is SIGKILLed and its peer, a new edge with
another id in the same group, starts on the same port at once. After the lapse the dispatcher
declares the lost edge lost and hands its calls to the peer (command.adopt):
- a talking call goes on and ends by the caller's BYE, relayed to the agent; the CDR is answered
  with the true talk time, the agent freed;
- a caller waiting on the queue media is not dropped from the queue without a word: the peer ends
  it (CDR edge_lost) and both the caller and the queue media get BYE.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_harness import caller_on_queue_media, restartable_edge_system

from callcenter_dev.edge_restart import start_on_its_port
from callcenter_dev.processes import ServiceProcess
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

LAPSE_MS = 3000
HEARTBEAT_MS = 500
TALK_MS = 12000
TALK_TOLERANCE_MS = 2500
GROUP = "sbc-1"
PEER = "edge-peer"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from restartable_edge_system(tmp_path_factory, "handover", lapse_ms=LAPSE_MS, heartbeat_ms=HEARTBEAT_MS,
                                       CC_EDGE_GROUP=GROUP)


def test_a_peer_on_the_same_address_adopts_the_calls_of_a_lost_edge(system: WholeSystem, peers: list[Sipp]) -> None:
    queue = Sipp(scenario("media_queue.xml"), calls=2, timeout_s=60).start()
    phone = Sipp(scenario("agent.xml"), timeout_s=60).start()
    peers += [queue, phone]
    system.provision("talk", None, queue, {"6001": phone})
    system.login("6001")
    talker = Sipp(scenario("caller.xml"), remote=system.caller_target, service="talk", timeout_s=60,
                  extra=["-d", str(TALK_MS)]).start()
    peers.append(talker)
    wait_for(lambda: system.agent_state("6001") == "in_call", 10, "the agent in the call", system)
    [talking] = system.call_ids_of_flow("talk")

    waiter, waiting = caller_on_queue_media(system, peers, "wait", queue, timeout_s=60)   # no agent: it waits
    wait_for(lambda: system.redis.hget(system.keys.dialog(talking), "legs") is not None, 10,
             "the talking call checkpointed", system)

    # the lost edge dies; its address moves to a peer of its group (another id) at once
    system.kill_edge()
    health = free_port()
    # started again should another process take the freed port first (callcenter_dev.edge_restart)
    peer = start_on_its_port(lambda: ServiceProcess(
        "sip-edge", {**system.edge_env, "CC_EDGE_ID": PEER, "CC_HEALTH_PORT": str(health)},
        health_url=f"http://127.0.0.1:{health}/healthz"))
    system.services["sip-edge-peer"] = peer

    # the waiting caller is ended by the peer with a true record; caller and queue media get BYE
    assert waiter.wait() == 0, waiter.errors() + system.logs() + peer.log()
    cdr = system.wait_for_cdr(waiting, timeout=LAPSE_MS / 1000 + 10)
    assert (cdr["ended_by"], cdr["reason"]) == ("edge", "edge_lost"), cdr
    # the talking call goes on at the peer and ends by the caller's BYE, relayed to the agent
    assert talker.wait() == 0, talker.errors() + system.logs() + peer.log()
    assert phone.wait() == 0, phone.errors() + system.logs() + peer.log()
    cdr = system.wait_for_cdr(talking)
    assert (cdr["outcome"], cdr["ended_by"]) == ("answered", "caller"), cdr
    assert abs(cdr["talk_ms"] - TALK_MS) <= TALK_TOLERANCE_MS, cdr
    wait_for(lambda: system.agent_state("6001") == "free", 10, "the agent free", system)

    assert "edge.lost" in system.services["dispatcher"].log()
    assert "edge.call_handed_over" in peer.log() and "call.adopted" in peer.log()
    assert not system.redis.sismember(system.keys.calls, talking)
    assert not system.redis.exists(system.keys.dialog(talking), system.keys.dialog(waiting))
