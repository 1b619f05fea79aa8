"""One owner per SIP port and per edge id, with the whole system running as processes.

- A second edge on the UDP port of a running edge refuses to start (no SO_REUSEADDR: Linux would
  hand every datagram to the newest socket) with a clear message and its own exit code; the first
  edge goes on serving calls.
- A second edge with the id of a live edge refuses to start: the id is a lease in Redis that the
  live edge renews with its heartbeat. A SIGKILLed edge's lease lapses, so a new process with its id
  starts within the lapse; a cleanly stopped edge releases it at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from e2e_harness import started_system

from callcenter_dev.processes import ServiceProcess
from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem, wait_for
from callcenter_sip_edge.ownership import EXIT_START_REFUSED

pytestmark = pytest.mark.slow

LAPSE_MS = 2000
HEARTBEAT_MS = 300


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from started_system(tmp_path_factory, "owner", common_env={"CC_EDGE_LAPSE_MS": str(LAPSE_MS)},
                              edge_env={"CC_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS)})


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


def test_a_second_edge_with_a_live_id_refuses_to_start(system: WholeSystem, peers: list[Sipp]) -> None:
    twin = second_edge(system, CC_SIP_PORT="0")   # another port: only the id is shared
    try:
        assert twin.proc is not None
        code = twin.proc.wait(LAPSE_MS / 1000 + 15)
    finally:
        twin.stop()
    assert code == EXIT_START_REFUSED, twin.log()
    assert "edge.start_refused" in twin.log() and "edge-e2e" in twin.log(), twin.log()
    # the twin never beat for the id, and the first edge still holds it and serves
    one_call(system, peers, "twin", "4002")


def holds_the_id(system: WholeSystem, edge: ServiceProcess) -> bool:
    """The lease on the id names this process (its token carries the pid)."""
    token = system.redis.get(system.keys.edge_lease(system.edge_id))
    assert edge.proc is not None
    return token is not None and f"/{edge.proc.pid}/" in token.decode()


def test_after_a_sigkill_a_new_edge_with_the_id_starts_within_the_lapse(system: WholeSystem) -> None:
    system.kill_edge()
    killed_at = time.monotonic()
    new = system.restart_edge()
    wait_for(lambda: holds_the_id(system, new), LAPSE_MS / 1000 + 5, "the new edge holding the id", system)
    started_s = time.monotonic() - killed_at
    assert started_s <= LAPSE_MS / 1000 + 3, started_s
    assert new.proc is not None and new.proc.poll() is None


def test_a_cleanly_stopped_edge_releases_its_id_at_once(system: WholeSystem) -> None:
    old = system.edge
    assert old.stop() == 0, old.log()
    stopped_at = time.monotonic()
    # started by hand, not by system.restart_edge (which returns only once the port is bound, after
    # the id and the checkpoints): the time measured is the id's, as it always was
    new = ServiceProcess("sip-edge", system.edge_env, health_url=old.health_url, logfile=old.logfile).start()
    system.services["sip-edge"] = new
    wait_for(lambda: holds_the_id(system, new), 5, "the new edge holding the id", system)
    # far less than the lapse: nothing was left to expire
    assert time.monotonic() - stopped_at < LAPSE_MS / 1000, system.edge.log()
    assert wait_until(lambda: system.redis.zscore(system.keys.edges, system.edge_id) is not None, 5)
