"""Queue media failures with the whole system running as processes.

- The queue media server hangs up the caller's queue leg: the caller is bridged to the queue media
  again (a new INVITE to the queue URI), and later reaches an agent.
- The queue media server is down (its URI points at a closed port): the caller gets a clean 503 and
  the CDR says failed / media_failed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from e2e_harness import started_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from started_system(tmp_path_factory, "media")


def test_queue_media_hangs_up_the_caller_is_bridged_to_it_again_then_reaches_an_agent(
        system: WholeSystem, peers: list[Sipp]) -> None:
    flow = "requeue"
    queue = Sipp(scenario("media_queue_hangs_up.xml"), calls=2, timeout_s=40).start()
    phone = Sipp(scenario("agent.xml")).start()
    peers += [queue, phone]
    system.provision(flow, None, queue, {"4001": phone})
    caller = Sipp(scenario("caller.xml"), remote=system.caller_target, service=flow, extra=["-d", "500"],
                  timeout_s=40).start()
    peers.append(caller)
    wait_for(lambda: queue.scenario_log().count("INVITE ") >= 1, 10, "the first queue leg", system)
    [call_id] = system.call_ids_of_flow(flow)
    # the media server hangs up after 3 s; the edge reports it, the dispatcher bridges again
    wait_for(lambda: "hanging up" in queue.scenario_log() and queue.scenario_log().count("INVITE ") >= 2, 10,
             "the second queue leg", system)
    first, second = [ln for ln in queue.scenario_log().splitlines() if ln.startswith("INVITE ")][:2]
    assert "cc_pos=0" in first and "cc_pos=0" in second
    assert "sdp=" in second and "m=audio" not in second  # late offer: the caller is answered already

    system.login("4001")
    assert caller.wait() == 0, caller.errors() + system.logs()
    assert phone.wait() == 0, phone.errors()
    assert queue.wait() == 0, queue.errors()  # leg 1 hung up by the server, leg 2 released by the edge
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"], cdr["ended_by"]) == ("answered", "4001", "caller"), cdr
    media_cmds = [d for t, d in system.events(call_id) if t == "call.queued"]
    assert len(media_cmds) == 1  # queued once: re-bridging is not a second queue entry
    wait_for(lambda: system.agent_state("4001") in ("wrap_up", "free"), 5, "the agent released", system)
    assert system.api.post("/v1/agents/4001/logout").status_code == 200


def test_queue_media_down_the_caller_gets_503_and_the_cdr_says_media_failed(
        system: WholeSystem, peers: list[Sipp]) -> None:
    flow = "nomedia"
    dead_port = free_port(socket.SOCK_DGRAM)  # nothing listens there
    phone = Sipp(scenario("agent.xml")).start()
    peers.append(phone)
    system.provision(flow, None, f"sip:queue@127.0.0.1:{dead_port}", {"4002": phone})
    caller = Sipp(scenario("caller_expect_503.xml"), remote=system.caller_target, service=flow,
                  timeout_s=30).start()
    peers.append(caller)
    assert caller.wait() == 0, caller.errors() + system.logs()
    assert "503 phrase=Service Unavailable" in caller.scenario_log(), caller.scenario_log()
    [call_id] = system.call_ids_of_flow(flow)
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "system", "media_failed"), cdr
    assert wait_until(lambda: not system.redis.sismember(system.keys.calls, call_id), 5)
    assert "INVITE" not in phone.scenario_log()
