"""A WebRTC agent end to end: SIP.js in headless Chromium (`callcenter_dev.browser`) REGISTERs its
AOR `sip:<agent-id>@<domain>` over the edge's WebSocket with the password set through the API, the
agent is logged in through the API, a queued SIPp call is offered to it, the edge rings the
browser over its own WebSocket connection and the page answers by itself; the caller gets the
browser's SDP by re-INVITE. The assertions are on the signalling and the CDR, not on media.

It needs the registrar (REGISTER with digest authentication, `PUT /v1/agents/{id}/sip`): where the
edge does not answer a REGISTER with a challenge, the test is skipped and says so.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from callcenter_dev.browser import BrowserPhone, PhoneConfig, ensure_sipjs, missing_tools, webrtc_sdp
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem

TENANT = "e2e-webrtc-agent"
DOMAIN = "callcenter.test"
PASSWORD = "browser-secret-1"
_MISSING = missing_tools()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(_MISSING), reason=f"the browser harness needs {', '.join(_MISSING)} "
                                                        "(scripts/bootstrap.sh installs chromium and npm)")]


def challenges_register(sip_port: int) -> bool:
    """Whether the edge answers a REGISTER (UDP) with a digest challenge (401/407)."""
    tag, call_id, branch = uuid.uuid4().hex[:8], uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:12]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        port = sock.getsockname()[1]
        request = (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
                   f"From: <sip:probe@{DOMAIN}>;tag={tag}\r\nTo: <sip:probe@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
                   f"CSeq: 1 REGISTER\r\nContact: <sip:probe@127.0.0.1:{port}>\r\nExpires: 60\r\n"
                   "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        sock.sendto(request.encode(), ("127.0.0.1", sip_port))
        try:
            while True:
                answer = sock.recv(65536).decode("utf-8", "replace")
                if not answer.startswith("SIP/2.0 1"):
                    return answer.startswith(("SIP/2.0 401 ", "SIP/2.0 407 "))
        except TimeoutError:
            return False


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    ensure_sipjs()
    ws_port = free_port()
    # SIP.js answers MD5 digest challenges only: the registrar challenges with MD5
    whole = WholeSystem.start(tmp_path_factory.mktemp("e2e-webrtc-agent"), tenant=TENANT,
                              common_env={"CC_RING_TIMEOUT_S": "10"},
                              edge_env={"CC_SIP_WS_PORT": str(ws_port), "CC_SIP_REGISTRAR_DOMAINS": DOMAIN,
                                        "CC_SIP_REGISTER_ALGORITHMS": "MD5"})
    whole.ws_port = ws_port  # type: ignore[attr-defined]
    try:
        if not challenges_register(whole.sip_port):
            pytest.skip("needs the registrar (branch registrar): the edge does not answer REGISTER with a challenge")
        yield whole
    finally:
        whole.stop()


@pytest.fixture(scope="module")
def scenarios() -> Iterator[Path]:
    """The caller answers the browser's offer with WebRTC-looking SDP and knows the agent's re-INVITE
    by its fingerprint (the browser's SDP has no s=callcenter-agent)."""
    folder = Path(tempfile.mkdtemp(prefix="cc-webrtc-agent-"))
    text = webrtc_sdp(scenario("caller.xml").read_text(), offerer=False)
    (folder / "caller.xml").write_text(text.replace('regexp="s=callcenter-agent"', 'regexp="a=fingerprint"'))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_browser_agent_answers_a_queued_call(system: WholeSystem, scenarios: Path) -> None:
    flow, agent_id = "webrtc", "w1"
    queue = Sipp(scenario("media_queue.xml")).start()
    try:
        system.provision(flow, None, queue, {agent_id: f"sip:{agent_id}@{DOMAIN}"})
        r = system.api.put(f"/v1/agents/{agent_id}/sip", json={"password": PASSWORD, "registration_required": True})
        assert r.status_code == 200, r.text
        ws = f"ws://127.0.0.1:{system.ws_port}"  # type: ignore[attr-defined]
        config = PhoneConfig(server=ws, aor=f"sip:{agent_id}@{DOMAIN}", register=True, username=agent_id,
                             password=PASSWORD, auto_answer=True)
        with BrowserPhone(config) as phone:
            phone.wait_kind("registered", 20)
            register = phone.wait_sip("out", "REGISTER ", 5)
            assert ";transport=ws" in register and ".invalid" in register, register
            r = system.api.post(f"/v1/agents/{agent_id}/login")
            assert r.status_code == 200, r.text

            caller = Sipp(scenarios / "caller.xml", remote=system.caller_target, service=flow,
                          extra=["-d", "1500"]).start()
            assert wait_until(lambda: len(system.call_ids_of_flow(flow)) == 1, 10), system.logs()
            [call_id] = system.call_ids_of_flow(flow)
            # the edge rang the browser over its own WebSocket (the contact it registered, or the
            # address that connection came from: the registrar's choice); the page answered
            invite = phone.wait_sip("in", "INVITE ", 20)
            assert invite.startswith("INVITE sip:") and "transport=ws" in invite.splitlines()[0], invite
            phone.wait_kind("session_established", 20)
            assert caller.wait(30) == 0, caller.errors() + system.logs()
            phone.wait_sip("in", "BYE ", 10)
            assert queue.wait(20) == 0, queue.errors()
        cdr = system.wait_for_cdr(call_id)
        assert (cdr["outcome"], cdr["agent_id"], cdr["ended_by"]) == ("answered", agent_id, "caller")
        assert cdr["talk_ms"] >= 1000
    finally:
        queue.stop()
