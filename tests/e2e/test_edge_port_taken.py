"""A sip-edge SIGKILLed and restarted on its port and id while another process took that port in
between (on a busy machine another test's SIPp or server may pick it: ports are drawn from one range).

The restarted process waits for the dead one's lease, takes the id (its first heartbeat), loads the
calls the dead one left, then cannot bind the port: it exits 75 (`edge.start_refused`). That clean
exit releases the id; it must leave the heartbeat of the calls it could not take over, or the
reconciler ends them `edge_unknown` and the dispatchers never declare the edge lost (the failure of
tests/e2e/test_replicas.py in CI: the killed-and-restarted edge gone from cc:{t}:edges, 8 CDRs
edge_unknown, the edge never back). Once the port is free, the harness starts it again as a
supervisor does (callcenter_dev.edge_restart): the call the dead edge held on the queue media ends
with a true CDR and a BYE to its caller.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from e2e_harness import sip

from callcenter_dev.processes import ServiceProcess
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import udp_port_bound_by
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

LAPSE_MS = 3000
EXIT_START_REFUSED = 75


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    system = WholeSystem.start(tmp_path_factory.mktemp("port-taken"), tenant="porttaken",
                               common_env={"CC_EDGE_LAPSE_MS": str(LAPSE_MS), "CC_REJECT_ON_NO_AGENTS": "false"},
                               edge_env={"CC_HEARTBEAT_INTERVAL_MS": "500"})
    try:
        yield system
    finally:
        system.stop()


def take_port(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    return s


def held_call(system: WholeSystem, peers: list[Sipp], flow: str) -> tuple[str, Sipp]:
    """A caller on the queue media of a flow without agents: a call the edge holds, not talking."""
    queue = Sipp(scenario("media_queue.xml")).start()
    peers.append(queue)
    system.provision(flow, None, queue, {})
    caller = Sipp(sip("caller_on_media_waits_for_bye.xml"), remote=system.caller_target, service=flow,
                  timeout_s=90).start()
    peers.append(caller)
    wait_for(lambda: len(system.call_ids_of_flow(flow)) == 1, 10, "the call arrived", system)
    [call_id] = system.call_ids_of_flow(flow)
    wait_for(lambda: system.redis.hget(system.keys.dialog(call_id), "phase") == b"media_answered", 10,
             "the caller on the queue media", system)
    return call_id, caller


def holds_its_port(system: WholeSystem, edge: ServiceProcess) -> bool:
    """Whether `edge` holds the edge's SIP port. /proc/net/udp is not read atomically: on a busy
    machine (sockets opened and closed meanwhile) one read can miss a line, so a miss is read again
    for a moment before it counts."""
    proc = edge.proc
    return proc is not None and wait_until(lambda: udp_port_bound_by(system.sip_port, proc.pid), 3)


def test_a_restart_refused_for_a_taken_port_keeps_the_calls_heartbeat_and_a_later_start_ends_them_truly(
        system: WholeSystem, peers: list[Sipp]) -> None:
    call_id, caller = held_call(system, peers, "held")
    old = system.edge
    system.kill_edge()
    intruder = take_port(system.sip_port)
    try:
        refused = ServiceProcess("sip-edge", system.edge_env, health_url=old.health_url, logfile=old.logfile)
        try:
            refused.start()
        except RuntimeError:
            pass   # it may exit before its health check answers
        assert refused.proc is not None
        assert refused.proc.wait(LAPSE_MS / 1000 + 20) == EXIT_START_REFUSED, refused.log()
        assert "edge.start_refused" in refused.log()
        # it took the id (it waited for the dead one's lease) and let it go at its exit...
        assert system.redis.get(system.keys.edge_lease(system.edge_id)) is None, refused.log()
        # ...but not the heartbeat: the dead one's call still lives on this edge
        assert system.redis.zscore(system.keys.edges, system.edge_id) is not None, refused.log()
        assert system.redis.sismember(system.keys.edge_calls(system.edge_id), call_id)
        assert "edge.released_with_calls" in refused.log()
    finally:
        intruder.close()

    # the port is free again: the supervisor's next start holds it and ends the held call
    new = system.restart_edge()
    assert holds_its_port(system, new), (new.proc and new.proc.poll(), new.log())
    assert caller.wait(30) == 0, caller.errors() + system.logs()   # the BYE nobody else could send
    cdr = system.wait_for_cdr(call_id, timeout=LAPSE_MS / 1000 + 10)
    # back within the lapse: ended by the edge (edge_restarted); later: edge_lost. Never edge_unknown
    assert (cdr["outcome"], cdr["reason"]) in {("failed", "edge_restarted"), ("failed", "edge_lost")}, cdr
    assert cdr["edge"] == system.edge_id, cdr


def test_the_harness_starts_the_edge_again_until_the_port_is_its_own(system: WholeSystem) -> None:
    system.kill_edge()
    intruder = take_port(system.sip_port)
    # the intruder lets go after a while (longer than a refused start takes: lease wait + start)
    timer = threading.Timer(LAPSE_MS / 1000 + 3, intruder.close)
    timer.start()
    try:
        started = time.monotonic()
        new = system.restart_edge()
        took_s = time.monotonic() - started
    finally:
        timer.cancel()
        intruder.close()
    assert holds_its_port(system, new), (new.proc and new.proc.poll(), new.log())
    assert took_s >= LAPSE_MS / 1000 + 3 - 0.5, took_s
    assert "edge.start_refused" in new.log()   # the same log file: an earlier start was refused
    assert wait_until(lambda: (system.redis.zscore(system.keys.edges, system.edge_id) or 0)
                      > time.time() * 1000 - LAPSE_MS, 5)
