"""A WebRTC caller end to end: SIP.js in headless Chromium (`callcenter_dev.browser`) calls a flow
over the edge's WebSocket, ws and wss (the whole system: redis, api, dispatcher, cdr-writer,
sip-edge with CC_SIP_WS_PORT and CC_SIP_WSS_PORT), hears the welcome and waits in the queue (SIPp
media with WebRTC-looking SDP), is connected to the agent logged in through the API by re-INVITE,
hangs up; the CDR is right. The assertions are on the signalling and the records, not on media
(SIPp speaks no DTLS-SRTP).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callcenter_dev.browser import BrowserPhone, PhoneConfig, ensure_sipjs, missing_tools, webrtc_sdp
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem

TENANT = "e2e-webrtc"
_MISSING = missing_tools()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(_MISSING), reason=f"the browser harness needs {', '.join(_MISSING)} "
                                                        "(scripts/bootstrap.sh installs chromium and npm)")]


@pytest.fixture(scope="module")
def scenarios() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="cc-webrtc-scenarios-"))
    for name, offerer in (("media_welcome", False), ("media_queue", True), ("agent", True)):
        (folder / f"{name}.xml").write_text(webrtc_sdp(scenario(f"{name}.xml").read_text(), offerer=offerer))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    ensure_sipjs()
    workdir = tmp_path_factory.mktemp("e2e-webrtc")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    # a self-signed certificate for wss (the browser is started with --ignore-certificate-errors)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    ports = {"ws": free_port(), "wss": free_port()}
    whole = WholeSystem.start(workdir, tenant=TENANT, edge_env={
        "CC_SIP_WS_PORT": str(ports["ws"]), "CC_SIP_WSS_PORT": str(ports["wss"]),
        "CC_SIP_TLS_CERTFILE": str(cert), "CC_SIP_TLS_KEYFILE": str(key)})
    whole.ws_ports = ports  # type: ignore[attr-defined]
    yield whole
    whole.stop()


@pytest.mark.parametrize(("transport", "agent_id"), [("ws", "1001"), ("wss", "1002")])
def test_browser_caller_waits_then_reaches_the_agent_and_the_cdr_is_right(system: WholeSystem, scenarios: Path,
                                                                          transport: str, agent_id: str) -> None:
    flow = f"support-{transport}"
    welcome = Sipp(scenarios / "media_welcome.xml", extra=["-d", "300"]).start()
    queue = Sipp(scenarios / "media_queue.xml").start()
    agent = Sipp(scenarios / "agent.xml").start()
    system.provision(flow, welcome, queue, {agent_id: agent})
    port = system.ws_ports[transport]  # type: ignore[attr-defined]
    with BrowserPhone(PhoneConfig(server=f"{transport}://127.0.0.1:{port}", aor="sip:alice@callers.invalid",
                                  call=f"sip:{flow}@127.0.0.1:{port};transport=ws")) as phone:
        assert wait_until(lambda: len(system.call_ids_of_flow(flow)) == 1, 20), \
            f"{phone.kinds()} {phone.errors()}\n{system.logs()}"
        [call_id] = system.call_ids_of_flow(flow)
        assert wait_until(lambda: any(t == "call.queued" for t, _ in system.events(call_id)), 20), system.logs()
        phone.wait_kind("session_established", 10)
        # the queue media's offer reached the browser by re-INVITE on its WebSocket
        queue_offer = phone.wait_sip("in", "INVITE ", 10)
        assert "o=" in queue_offer and ".invalid" in queue_offer.splitlines()[0]

        r = system.api.post(f"/v1/agents/{agent_id}/login")
        assert r.status_code == 200, r.text
        assert wait_until(lambda: any(t == "call.connected" for t, _ in system.events(call_id)), 15), \
            system.logs()
        reinvites = [m for m in phone.sip("in") if m.startswith("INVITE ")]
        assert wait_until(lambda: len([m for m in phone.sip("in") if m.startswith("INVITE ")]) >= 2, 10), reinvites
        agent_offer = [m for m in phone.sip("in") if m.startswith("INVITE ")][1]
        assert "s=callcenter-agent" in agent_offer and "a=fingerprint:" in agent_offer, agent_offer
        time.sleep(1.5)   # talk
        phone.command("hangup")
        phone.wait_sip("out", "BYE ", 10)
        phone.wait_sip("in", "SIP/2.0 200", 10)
        assert agent.wait(20) == 0, agent.errors()
        assert queue.wait(20) == 0, queue.errors()
        assert welcome.wait(20) == 0, welcome.errors()

    cdr = system.wait_for_cdr(call_id)
    assert cdr["flow_id"] == flow and cdr["agent_id"] == agent_id and cdr["caller"] == "alice"
    assert cdr["outcome"] == "answered" and cdr["ended_by"] == "caller"
    assert cdr["wait_ms"] > 0 and cdr["pickup_ms"] >= 900   # the phone rings 1 s before answering
    assert 1300 <= cdr["talk_ms"] <= 8000
    types = [t for t, _ in system.events(call_id)]
    assert types == ["call.arrived", "call.welcome_ended", "call.queued", "call.offered", "call.connected",
                     "call.ended"], types
