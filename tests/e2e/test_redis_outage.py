"""Redis away (redis-server SIGSTOPped) under SIPp calls, for less and for longer than the lapse.

What must hold (issue 9, acceptance 3): no live edge is declared lost, every call completes, every
CDR says what SIPp saw (answered, ended by the caller, the talk time it talked), and no agent ever
has two calls at once. While Redis is away the edge keeps its calls and holds its reports, then
delivers them in order; the dispatcher counts the lapse only while it sees Redis.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from e2e_harness import most_calls_an_agent_held, started_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, redis_topology_under_test, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    redis_topology_under_test() != "single", reason="stops one redis-server process (SIGSTOP/restart); a cluster's or "
    "sentinel's fail-over is tested in test_redis_cluster.py and test_redis_sentinel.py")]

LAPSE_MS = 2000
TALK_MS = 4000


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from started_system(tmp_path_factory, "outage",
                              common_env={"CC_EDGE_LAPSE_MS": str(LAPSE_MS)},
                              edge_env={"CC_HEARTBEAT_INTERVAL_MS": "400"})


def pause_redis(system: WholeSystem, seconds: float) -> None:
    proc = system.server.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("outage_s", [2, 6])
def test_redis_away_under_calls_loses_no_edge_and_no_call(system: WholeSystem, peers: list[Sipp],
                                                         outage_s: int) -> None:
    flow = f"outage{outage_s}"
    agents = [f"6{outage_s}01", f"6{outage_s}02"]
    queue = Sipp(scenario("media_queue.xml"), calls=3, timeout_s=90).start()
    phones = {a: Sipp(scenario("agent.xml"), calls=2, timeout_s=90).start() for a in agents}
    peers += [queue, *phones.values()]
    system.provision(flow, None, queue, dict(phones))
    system.login(*agents)
    # three callers, two agents (a phone takes up to two calls): two talk through the outage, the
    # third waits in the queue
    caller = Sipp(scenario("caller.xml"), remote=system.caller_target, service=flow, calls=3, rate=5,
                  extra=["-d", str(TALK_MS)], timeout_s=90).start()
    peers.append(caller)
    wait_for(lambda: all(system.agent_state(a) == "in_call" for a in agents), 15, "both agents talking", system)

    pause_redis(system, outage_s)

    assert caller.wait() == 0, caller.errors() + system.logs()
    call_ids = system.call_ids_of_flow(flow)
    assert len(call_ids) == 3
    for call_id in call_ids:
        cdr = system.wait_for_cdr(call_id, timeout=15)
        assert (cdr["outcome"], cdr["ended_by"]) == ("answered", "caller"), cdr
        # the talk time is the edge's (its answer to its BYE), however late the reports were applied
        assert TALK_MS - 500 <= cdr["talk_ms"] <= TALK_MS + 1500, cdr
    assert "edge.lost" not in system.services["dispatcher"].log()
    assert system.redis.zscore(system.keys.edges, system.edge_id) is not None
    assert most_calls_an_agent_held(system) == 1
    for a in agents:
        wait_for(lambda a=a: system.agent_state(a) == "free", 10, f"agent {a} free", system)
        assert system.api.post(f"/v1/agents/{a}/logout").status_code == 200
