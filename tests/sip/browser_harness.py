"""Helpers of the WebSocket and browser tests: an edge with ws and wss, SIPp peers whose SDP looks
like WebRTC's (so that the browser takes it), the browser phone fixture's skip reasons.

The SIPp peers' SDP is made to look like WebRTC's (`callcenter_dev.browser.webrtc_sdp`).
"""

from __future__ import annotations

from pathlib import Path

from sip_harness import SCENARIOS, SippLauncher, SippProcess
from stream_harness import Certificates

from callcenter_dev.browser import missing_tools, webrtc_sdp
from callcenter_sip_edge.sippy.streams import StreamOptions


def webrtc_scenario(tmp: Path, scenario: str, *, offerer: bool, agent_hangs_up: bool = False) -> str:
    """tests/sipp/<scenario>.xml with WebRTC-looking SDP (an offer: actpass; an answer: passive, the
    browser is then the DTLS client for good), written under `tmp`; returned as a name for
    `SippLauncher.start` (a path without .xml). `agent_hangs_up`: after its ACK the peer sends BYE
    instead of waiting for one."""
    text = webrtc_sdp((SCENARIOS / f"{scenario}.xml").read_text(), offerer=offerer)
    if agent_hangs_up:
        head, _, _ = text.partition('  <recv request="BYE"/>')
        text = head + """  <pause milliseconds="500"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: [$remote_from]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" crlf="true"/>
  <timewait milliseconds="1000"/>
  <Reference variables="invite_sdp,remote_from,ack_sdp"/>
</scenario>
"""
    path = tmp / f"{Path(scenario).name}_webrtc{'_hangup' if agent_hangs_up else ''}.xml"
    path.write_text(text)
    return str(path.with_suffix(""))


def start_webrtc_sipp(sipp: SippLauncher, scenario: str, name: str, *, offerer: bool,
                      agent_hangs_up: bool = False) -> SippProcess:
    return sipp.start(webrtc_scenario(sipp.tmp_path, scenario, offerer=offerer, agent_hangs_up=agent_hangs_up),
                      name=name)


def ws_options(certs: Certificates, **limits: float) -> StreamOptions:
    """ws and wss on free ports (wss with the throw-away CA's certificate for 127.0.0.1)."""
    return StreamOptions(ws_port=0, wss_port=0, tls_certfile=str(certs.cert), tls_keyfile=str(certs.key),
                         tls_cafile=str(certs.ca), **limits)  # type: ignore[arg-type]


def browser_skip_reason() -> str | None:
    missing = missing_tools()
    if missing:
        return f"the browser harness needs {', '.join(missing)} (scripts/bootstrap.sh installs chromium)"
    return None
