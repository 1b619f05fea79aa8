"""Session timers (RFC 4028) of a call adopted by a peer edge after its edge is lost, with the whole
system running as processes (the hand-over as in test_edge_handover.py: the lost edge SIGKILLed,
a peer of its address group started on the same port at once).

The caller asks for a 12 s session interval, shorter than the edges' own 30 s, and leaves the
refreshes to the edge. The interval is agreed by the lost edge and kept in the call's checkpoint;
the peer that adopts the call refreshes the caller's leg by UPDATE at half of those 12 s, counted
from where the lost edge started the interval, each UPDATE saying 12 s. Before this, an adopted
call had no session timer at all: the caller scenario would wait for refreshes that never came.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from e2e_harness import caller, ok, ring_before_media, start

from callcenter_dev.edge_restart import start_on_its_port
from callcenter_dev.processes import ServiceProcess
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

LAPSE_MS = 3000
HEARTBEAT_MS = 500
GROUP = "sbc-timers"
PEER = "edge-peer-timers"
CALLER_INTERVAL_S = 12
EDGE_INTERVAL_S = 30


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    system = WholeSystem.start(tmp_path_factory.mktemp("handover-timers"), tenant="handover-timers",
                               common_env={"CC_EDGE_LAPSE_MS": str(LAPSE_MS), "CC_WRAPUP_S": "1"},
                               edge_env={"CC_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS), "CC_EDGE_GROUP": GROUP,
                                         "CC_SIP_SESSION_EXPIRES_S": str(EDGE_INTERVAL_S),
                                         "CC_SIP_SESSION_MIN_SE_S": "2", "CC_SIP_SESSION_SHORT_FOR_TESTS": "true"})
    try:
        yield system
    finally:
        system.stop()


def test_an_adopted_call_keeps_its_negotiated_session_timer(system: WholeSystem, peers: list[Sipp]) -> None:
    queue = start(peers, Sipp(scenario("media_queue.xml"), timeout_s=60))
    phone = start(peers, Sipp(scenario("agent.xml"), timeout_s=60))
    system.provision("timers", None, queue, {"6101": phone})
    system.login("6101")
    with ring_before_media(system):   # the agent answers the caller's INVITE: no re-INVITE to the caller
        talker = start(peers, caller(system, "caller_timer_handover.xml", "timers", timeout_s=60))
        wait_for(lambda: system.agent_state("6101") == "in_call", 10, "the agent in the call", system)
    [call_id] = system.call_ids_of_flow("timers")
    wait_for(lambda: system.redis.hget(system.keys.dialog(call_id), "timers") is not None, 10,
             "the talking call checkpointed with its session timer", system)
    timers = json.loads(system.redis.hget(system.keys.dialog(call_id), "timers"))
    assert timers["caller"]["interval"] == CALLER_INTERVAL_S and timers["caller"]["we_refresh"] is True, timers

    system.kill_edge()
    health = free_port()
    # started again should another process take the freed port first (callcenter_dev.edge_restart)
    peer = start_on_its_port(lambda: ServiceProcess(
        "sip-edge", {**system.edge_env, "CC_EDGE_ID": PEER, "CC_HEALTH_PORT": str(health)},
        health_url=f"http://127.0.0.1:{health}/healthz"))
    system.services["sip-edge-peer"] = peer

    # the caller scenario passes only if two UPDATEs saying 12;refresher=uac came before its BYE
    ok(talker, system, timeout=60)
    ok(phone, system, timeout=30)
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"]) == ("answered", "caller"), cdr
    # the two refreshes at 6 and 12 s of the interval: the call lasted about one interval
    assert (CALLER_INTERVAL_S - 2) * 1000 <= cdr["talk_ms"] <= (CALLER_INTERVAL_S + 6) * 1000, cdr
    log = peer.log()
    assert "call.adopted" in log and "call.session_timer_adopted" in log, log[-3000:]
    wait_for(lambda: system.agent_state("6101") == "free", 10, "the agent free", system)
