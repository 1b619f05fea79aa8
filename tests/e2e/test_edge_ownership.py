"""One owner per SIP port and per edge id, with the whole system running as processes.

- A second edge on the UDP port of a running edge refuses to start (no SO_REUSEADDR: Linux would
  hand every datagram to the newest socket) with a clear message and its own exit code; the first
  edge goes on serving calls.
- A second edge with the id of a live edge refuses to start: the id is a lease in Redis that the
  live edge renews with its heartbeat. A SIGKILLed edge's lease lapses, so a new process with its id
  starts within the lapse; a cleanly stopped edge releases it at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from callcenter_dev.processes import ServiceProcess
from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem
from callcenter_sip_edge.ownership import EXIT_START_REFUSED

pytestmark = pytest.mark.slow

LAPSE_MS = 2000
HEARTBEAT_MS = 300


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    lapse = {"CC_EDGE_LAPSE_MS": str(LAPSE_MS)}
    system = WholeSystem.start(tmp_path_factory.mktemp("edge-owner"), tenant="owner", common_env=lapse,
                               edge_env={"CC_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS)})
    try:
        yield system
    finally:
        system.stop()


def second_edge(system: WholeSystem, **env: str) -> ServiceProcess:
    """Another sip-edge process with the first one's settings but for `env` (no health port)."""
    return ServiceProcess("sip-edge", {**system.edge_env, "CC_HEALTH_PORT": "0", **env}).start()


def one_call(system: WholeSystem, peers: list[Sipp], flow: str, agent_id: str) -> None:
    """A whole call through the running edge: the caller talks to the agent 1 s and hangs up."""
    queue = Sipp(scenario("media_queue.xml")).start()
    phone = Sipp(scenario("agent.xml")).start()
    peers += [queue, phone]
    system.provision(flow, None, queue, {agent_id: phone})
    system.login(agent_id)
    caller = Sipp(scenario("caller.xml"), remote=system.caller_target, service=flow, extra=["-d", "1000"]).start()
    peers.append(caller)
    assert caller.wait() == 0, caller.errors() + system.logs()
    assert phone.wait() == 0, phone.errors()
    [call_id] = system.call_ids_of_flow(flow)
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"]) == ("answered", agent_id), cdr
    assert system.api.post(f"/v1/agents/{agent_id}/logout").status_code == 200


def test_a_second_edge_on_the_same_port_refuses_to_start_and_the_first_keeps_serving(
        system: WholeSystem, peers: list[Sipp]) -> None:
    intruder = second_edge(system, CC_EDGE_ID="edge-intruder")
    try:
        assert intruder.proc is not None
        code = intruder.proc.wait(15)
    finally:
        intruder.stop()
    assert code == EXIT_START_REFUSED, intruder.log()
    log = intruder.log()
    assert "edge.start_refused" in log and f"UDP port {system.sip_port}" in log, log
    assert system.edge.proc is not None and system.edge.proc.poll() is None
    one_call(system, peers, "port", "4001")
