"""linphone-cli (Debian `linphonec`) as an agent, every hop real: the api sets the agent's SIP
password, linphonec REGISTERs its AOR at the sip-edge over UDP and over TCP with that password
(digest with the edge's default algorithms), the api logs the agent in (refused before it
registered), a queued SIPp call rings the AOR, linphonec auto-answers and the CDR names the agent.
And linphonec as a caller into a flow: it hears the queue media, takes the agent's re-INVITE, hangs up.
Runs headless: no sound card, so linphonec plays and records files (`soundcard use files`).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_harness import agent, caller, flow, has_event, ok, only_call, start, started_system

from callcenter_dev import linphone
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port, stop_process
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("linphonec") is None,
                       reason="linphone-cli is not installed (apt-get install linphone-cli)"),
]

DOMAIN = "callcenter.test"
PASSWORD = "agent-secret-2"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from started_system(tmp_path_factory, "linphone",
                              common_env={"CC_RING_TIMEOUT_S": "8", "CC_WRAPUP_S": "1"},
                              edge_env={"CC_SIP_REGISTRAR_DOMAINS": DOMAIN, "CC_SIP_TCP_PORT": str(free_port())})


def contacts(system: WholeSystem, agent_id: str) -> list[dict[str, object]]:
    r = system.api.get(f"/v1/agents/{agent_id}/sip")
    assert r.status_code == 200, r.text
    return list(r.json()["contacts"])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_linphone_registers_with_its_password_and_answers_a_queued_call(
        system: WholeSystem, peers: list[Sipp], tmp_path: Path, transport: str) -> None:
    agent_id, flow_id = f"lin-{transport}", f"reg-lin-{transport}"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    flow(system, flow_id, queue)
    agent(system, agent_id, flow_id, f"sip:{agent_id}@{DOMAIN}")
    r = system.api.put(f"/v1/agents/{agent_id}/sip", json={"password": PASSWORD, "registration_required": True})
    assert r.status_code == 200, r.text
    realm = r.json()["realm"]
    r = system.api.post(f"/v1/agents/{agent_id}/login")
    assert r.status_code == 409 and "registered" in r.json()["detail"], r.text

    edge_port = system.sip_port if transport == "udp" else int(system.edge_env["CC_SIP_TCP_PORT"])
    port = free_port()
    rc = tmp_path / "linphonerc"
    rc.write_text(linphone.config(port=port, user=agent_id, domain=DOMAIN, password=PASSWORD,
                                  realm=realm, edge_host="127.0.0.1", edge_port=edge_port, transport=transport,
                                  rtp_port=free_port()))
    log = tmp_path / "linphone.log"
    phone = linphone.start(tmp_path, rc, log)
    assert phone.stdin is not None
    phone.stdin.write(b"soundcard use files\n")
    phone.stdin.flush()
    try:
        wait_for(lambda: len(contacts(system, agent_id)) == 1, 20, f"linphone registered over {transport}", system)
        [contact] = contacts(system, agent_id)
        assert contact["transport"] == transport, contact

        # a caller that takes one re-INVITE (the agent's SDP) and hangs up
        c = start(peers, caller(system, "caller_reinvited_1_bye.xml", flow_id, pause_ms=1500))
        call_id = only_call(system, flow_id)
        wait_for(lambda: has_event(system, call_id, "call.queued"), 10, "the call queued", system)
        wait_for(lambda: system.redis.hget(system.keys.dialog(call_id), "phase") == b"media_answered", 10,
                 "the caller on the queue media", system)
        r = system.api.post(f"/v1/agents/{agent_id}/login")
        assert r.status_code == 200 and r.json()["state"] == "ringing", r.text
        ok(c, system)
        cdr = system.wait_for_cdr(call_id)
        assert (cdr["outcome"], cdr["agent_id"]) == ("answered", agent_id), log.read_text(errors="replace")[-3000:]
        trace = log.read_text(errors="replace")
        # it answered our SHA-256 challenge (listed first; the MD5 one is offered too)
        assert "Authorization:  Digest realm=\"callcenter\"" in trace and "algorithm=SHA-256, username" in trace
        # rung at the Contact it registered (over TCP: its connection's port, so the same connection)
        assert f"INVITE {contact['uri']}" in trace, trace[-3000:]
        assert f"transport={transport} SIP/2.0" in trace.split("\nINVITE ", 1)[1].split("\n", 1)[0]
        assert system.api.post(f"/v1/agents/{agent_id}/logout").status_code == 200

        # `quit` unregisters (Expires: 0): the binding goes at once
        phone.stdin.write(b"quit\n")
        phone.stdin.flush()
        wait_for(lambda: contacts(system, agent_id) == [], 10, "linphone unregistered", system)
        phone.wait(10)
    finally:
        stop_process(phone)
    with socket.socket() as probe:   # the phone let go of its port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_linphone_calls_a_flow_reaches_a_sipp_agent_and_hangs_up(
        system: WholeSystem, peers: list[Sipp], tmp_path: Path) -> None:
    flow_id = "lin-caller"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone_agent = start(peers, Sipp(scenario("agent.xml")))
    flow(system, flow_id, queue)
    agent(system, "lin-a1", flow_id, phone_agent)
    assert system.api.post("/v1/agents/lin-a1/login").status_code == 200

    rc = tmp_path / "linphonerc"
    rc.write_text(linphone.caller_config(port=free_port(), rtp_port=free_port()))
    log = tmp_path / "linphone.log"
    phone = linphone.start(tmp_path, rc, log)
    assert phone.stdin is not None
    phone.stdin.write(f"soundcard use files\ncall sip:{flow_id}@{system.caller_target}\n".encode())
    phone.stdin.flush()
    try:
        call_id = only_call(system, flow_id)
        # the agent rings once the caller is on the queue media; its answer reaches linphone by re-INVITE
        wait_for(lambda: system.api.get("/v1/agents/lin-a1").json()["state"] == "in_call", 20,
                 "the agent in the call", system)
        # linphone's own INVITE, then the edge's re-INVITE to its Contact (no user part: it registers nowhere)
        assert wait_until(lambda: log.read_text(errors="replace").count("\nINVITE sip:") >= 2, 10)
        phone.stdin.write(b"terminate\n")
        phone.stdin.flush()
        ok(phone_agent, system)   # the agent got the BYE linphone sent
        cdr = system.wait_for_cdr(call_id)
        assert (cdr["outcome"], cdr["agent_id"]) == ("answered", "lin-a1"), log.read_text(errors="replace")[-3000:]
        trace = log.read_text(errors="replace")
        assert f"INVITE sip:{flow_id}@{system.caller_target}" in trace
        reinvite = trace.split("\nINVITE sip:")[2]
        assert reinvite.startswith("127.0.0.1:") and "\nSIP/2.0 200 Ok" in reinvite, trace[-3000:]
        assert f"\nBYE sip:{system.caller_target} SIP/2.0" in trace   # to the edge's Contact
        phone.stdin.write(b"quit\n")
        phone.stdin.flush()
        phone.wait(10)
    finally:
        stop_process(phone)
