"""A phone registered over TCP to one edge, and a call arriving at another edge (two real edges,
callcenter_dev.replicas): the edge holding the call cannot reach the phone (the connection it
registered over is held by the other edge's process), so it refuses the ring at once and says why
(`report.command_refused`, reason `registered_elsewhere`) instead of opening a connection of its
own towards the phone's source port and waiting for the ring timeout; the agent is freed without
penalty and is not paused, and that call is not offered to it again while it waits. A call arriving
at the phone's own edge rings it over its connection and is answered. The phone is baresip,
registering by itself over TCP with its password.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_harness import agent, agent_failures, flow, has_event, ok, sip, start

from callcenter_dev import baresip
from callcenter_dev.replicas import Counts, Replicas
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port, stop_process
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

DOMAIN = "callcenter.test"
PASSWORD = "agent-secret-2"
RING_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    rig = Replicas.start(
        tmp_path_factory.mktemp("two-edges"), Counts(edges=2, dispatchers=1, cdr_writers=1, apis=1, workers=0),
        tenant="two-edges", common_env={"CC_RING_TIMEOUT_S": str(RING_TIMEOUT_S), "CC_WRAPUP_S": "1"},
        # baresip 1.0 knows MD5 only (docs/registering-agents.md); each edge its own TCP port
        edge_env={"CC_SIP_REGISTRAR_DOMAINS": DOMAIN, "CC_SIP_REGISTER_ALGORITHMS": "MD5",
                  "CC_SIP_TCP_PORT": str(free_port())})
    try:
        yield rig
    finally:
        rig.stop()


def test_a_call_on_another_edge_is_refused_at_once_and_one_on_the_phones_edge_is_answered(
        replicas: Replicas, peers: list[Sipp], tmp_path: Path) -> None:
    system: WholeSystem = replicas.system
    first, second = (system.services[name] for name in replicas.edges)
    agent_id, flow_id = "tcp-phone", "two-edges"
    queue = start(peers, Sipp(scenario("media_queue.xml"), calls=2))
    flow(system, flow_id, queue)
    agent(system, agent_id, flow_id, f"sip:{agent_id}@{DOMAIN}")
    r = system.api.put(f"/v1/agents/{agent_id}/sip", json={"password": PASSWORD, "registration_required": True})
    assert r.status_code == 200, r.text

    tcp_port = int(first.env["CC_SIP_TCP_PORT"])
    port = free_port()
    (tmp_path / "config").write_text(baresip.config("127.0.0.1", port))
    (tmp_path / "accounts").write_text(
        f"<sip:{agent_id}@{DOMAIN};transport=tcp>;auth_pass={PASSWORD};"
        f"outbound=\"sip:127.0.0.1:{tcp_port};transport=tcp\";regint=60;answermode=auto\n")
    log = tmp_path / "baresip.log"
    phone = subprocess.Popen(["timeout", "-k", "5", "90", "baresip", "-f", str(tmp_path), "-s", "-t", "80"],
                             cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        def contacts() -> list[dict[str, object]]:
            return list(system.api.get(f"/v1/agents/{agent_id}/sip").json()["contacts"])

        wait_for(lambda: len(contacts()) == 1, 15, "baresip registered over TCP to the first edge", system)
        [contact] = contacts()
        assert (contact["transport"], contact["edge"]) == ("tcp", first.env["CC_EDGE_ID"]), contact
        assert system.api.post(f"/v1/agents/{agent_id}/login").status_code == 200

        # 1. a call at the second edge: refused at once, well before the ring timeout
        c = start(peers, Sipp(sip("caller_answered_bye.xml"), remote=f"127.0.0.1:{second.env['CC_SIP_PORT']}",
                              service=flow_id, extra=["-d", "4000"]))
        wait_for(lambda: len(system.call_ids_of_flow(flow_id)) == 1, 10, "the call arrived", system)
        [elsewhere] = system.call_ids_of_flow(flow_id)
        wait_for(lambda: has_event(system, elsewhere, "call.offered"), 10, "the call offered", system)
        offered = time.monotonic()
        wait_for(lambda: agent_failures(system, elsewhere), 5, "the ring refused", system)
        assert time.monotonic() - offered < RING_TIMEOUT_S / 2
        assert agent_failures(system, elsewhere)[0][0] == agent_id
        assert "call.contacts_elsewhere" in second.log() and "registered_elsewhere" in second.log()
        assert "INVITE sip:" not in log.read_text(errors="replace"), "the phone was never rung"
        assert system.agent_state(agent_id) != "paused", "registered, only elsewhere: not paused"
        ok(c, system)   # the caller heard the queue media and hung up
        cdr = system.wait_for_cdr(elsewhere)
        assert cdr["agent_id"] in (None, ""), cdr
        # offered to it once: while the caller waited (4 s, four refused_offer_hold_ms) the call
        # skipped the agent its edge cannot reach, though that agent was the only one free
        assert agent_failures(system, elsewhere) == [(agent_id, "refused")]
        assert [t for t, _ in system.events(elsewhere)].count("call.offered") == 1
        wait_for(lambda: system.agent_state(agent_id) == "free", 10, "the agent free", system)

        # 2. a call at the phone's own edge: rung over the phone's connection, answered
        c = start(peers, Sipp(sip("caller_reinvited_1_bye.xml"), remote=f"127.0.0.1:{first.env['CC_SIP_PORT']}",
                              service=flow_id, extra=["-d", "1500"]))
        wait_for(lambda: len(system.call_ids_of_flow(flow_id)) == 2, 10, "the second call arrived", system)
        here = system.call_ids_of_flow(flow_id)[1]
        ok(c, system)
        cdr = system.wait_for_cdr(here)
        assert (cdr["outcome"], cdr["agent_id"]) == ("answered", agent_id), log.read_text(errors="replace")[-3000:]
    finally:
        stop_process(phone)
