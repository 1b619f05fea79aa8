"""A WebRTC caller in headless Chromium (SIP.js, `callcenter_dev.browser`) over the edge's
WebSocket transport (RFC 7118), plain ws and wss: it calls a flow, gets the welcome then the queue
media, is connected to a SIPp agent by re-INVITE, and the call ends by BYE from either side. The
assertions are on the signalling the browser saw and sent (its SIP trace), not on media.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from browser_harness import browser_skip_reason, start_webrtc_sipp, ws_options
from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher, expect_success
from stream_harness import Certificates, running_edge

from callcenter_dev.browser import BrowserPhone, PhoneConfig, ensure_sipjs
from callcenter_dev.processes import group_members

_SKIP = browser_skip_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


def _sdp(message: str) -> str:
    return message.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in message else ""


def _origin(sdp: str) -> str:
    match = re.search(r"^o=(\S+)", sdp, re.MULTILINE)
    return match.group(1) if match else ""


@pytest.fixture(scope="module")
def sipjs() -> None:
    ensure_sipjs()   # npm, once per machine (cached)


@pytest_asyncio.fixture
async def ws_edge(certs: Certificates) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(ws_options(certs)) as edge:
        yield edge


@pytest.fixture
def phones() -> Iterator[list[BrowserPhone]]:
    started: list[BrowserPhone] = []
    yield started
    for phone in started:
        phone.close()


def _caller(phones: list[BrowserPhone], edge: EdgeUnderTest, transport: str) -> BrowserPhone:
    port = edge.stack.stream_ports[transport]
    phone = BrowserPhone(PhoneConfig(server=f"{transport}://{LOOPBACK}:{port}", aor="sip:alice@callers.invalid",
                                     call=f"sip:support@{LOOPBACK}:{port};transport=ws"))
    phones.append(phone)
    return phone.start()


@pytest.mark.parametrize(("transport", "hangup_by"), [("ws", "caller"), ("wss", "agent")])
async def test_browser_caller_is_connected_to_an_agent_by_reinvite(
        ws_edge: EdgeUnderTest, sipp: SippLauncher, phones: list[BrowserPhone], sipjs: None,
        transport: str, hangup_by: str) -> None:
    stack, dispatcher = ws_edge.stack, ws_edge.dispatcher
    welcome = start_webrtc_sipp(sipp, "media_welcome_uas", "welcome", offerer=False)
    queue = start_webrtc_sipp(sipp, "media_queue_late_uas", "queue", offerer=True)
    agent = start_webrtc_sipp(sipp, "agent_late_uas", "agent", offerer=True, agent_hangs_up=hangup_by == "agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, welcome.uri("welcome"), "welcome"))
    dispatcher.on("media_ended", lambda f: stack.media(f.call_id, queue.uri("queue", ";cc_pos=0"), "queue"),
                  purpose="welcome")
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "offer-1", "agent-7", agent.uri("agent"), 10.0),
                  purpose="queue")
    phone = _caller(phones, ws_edge, transport)

    # the browser's INVITE came over the WebSocket: its Via says WS/WSS, its host is .invalid
    invite = await asyncio.to_thread(phone.wait_sip, "out", "INVITE ", 30.0)
    assert re.search(r"^Via: SIP/2.0/WSS? [0-9a-z]+\.invalid;", invite, re.MULTILINE | re.IGNORECASE), invite
    arrived = await dispatcher.wait_for("call_arrived", 20.0)
    assert arrived.data["flow"] == "support"
    # the welcome media got the browser's offer, and the browser the welcome media's answer
    ok = await asyncio.to_thread(phone.wait_sip, "in", "SIP/2.0 200", 20.0)
    assert "UDP/TLS/RTP/SAVPF" in _sdp(ok) and _origin(_sdp(ok)) == "welcome", ok
    welcome_invite = next(m for m in welcome.messages() if not m.sent and m.is_request("INVITE"))
    assert "a=fingerprint:" in welcome_invite.body and "a=ice-ufrag:" in welcome_invite.body
    await phone_established(phone)

    # the queue media's offer then the agent's reach the browser by re-INVITE over its connection
    await dispatcher.wait_for("agent_answered", 30.0)
    reinvites = [m for m in phone.sip("in") if m.startswith("INVITE ")]
    assert [_origin(_sdp(m)) for m in reinvites] == ["queue", "agent"], reinvites
    for message in reinvites:
        assert re.search(r"^INVITE sip:[^ ]*\.invalid[^ ]*;transport=ws", message, re.IGNORECASE), message
        # Via names the transport it went by (RFC 7118 5.1), Contact the edge's WebSocket
        assert f"\r\nVia: SIP/2.0/{transport.upper()} 127.0.0.1:{ws_edge.stack.stream_ports[transport]};" in message
        assert f";transport={transport}>" in message, message
    await asyncio.to_thread(phone.wait_for, _nth(2, _invite_answer), 10.0, "the answer to the second re-INVITE")

    if hangup_by == "caller":
        phone.command("hangup")
        await asyncio.to_thread(phone.wait_sip, "out", "BYE ", 20.0)
    else:
        bye = await asyncio.to_thread(phone.wait_sip, "in", "BYE ", 20.0)
        assert ";transport=ws" in bye.splitlines()[0], bye
        await asyncio.to_thread(phone.wait_sip, "out", "SIP/2.0 200", 5.0)
    ended = await dispatcher.wait_for("call_ended", 20.0)
    assert ended.data["by"] == hangup_by
    await expect_success(welcome, queue, agent)
    for peer in (queue, agent):   # the browser's answers to their offers, relayed in the edge's ACK
        ack = next(m for m in peer.messages() if not m.sent and m.is_request("ACK"))
        assert "a=fingerprint:" in ack.body and "a=setup:active" in ack.body, ack.text
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "media_ended", "media_answered",
                                  "agent_answered", "call_ended"]
    assert stack.active_calls() == 0


def _invite_answer(event: dict[str, Any]) -> bool:
    text = str(event.get("text", ""))
    return event["kind"] == "sip_out" and text.startswith("SIP/2.0 200") and \
        re.search(r"^CSeq: \d+ INVITE", text, re.MULTILINE) is not None and "v=0" in text


def _nth(n: int, predicate: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    """A predicate true for the n-th event that satisfies `predicate` (events are seen once, in order)."""
    seen = [0]

    def check(event: dict[str, Any]) -> bool:
        if predicate(event):
            seen[0] += 1
        return seen[0] >= n

    return check


async def phone_established(phone: BrowserPhone) -> None:
    await asyncio.to_thread(phone.wait_kind, "session_established", 20.0)


async def test_ws_agent_without_live_connection_is_refused_at_once(ws_edge: EdgeUnderTest,
                                                                   sipp: SippLauncher) -> None:
    """An agent URI with transport=ws whose browser has no connection here: the ring fails at once
    (430, reported unreachable), so the dispatcher can offer the call to another agent."""
    await _ring_ws_uri_without_connection(ws_edge, sipp, expected_code=430)


async def test_ws_agent_on_an_edge_without_websocket_is_refused_at_once(edge: EdgeUnderTest,
                                                                        sipp: SippLauncher) -> None:
    """The same on an edge where WebSocket is off: nothing is sent, the ring fails at once."""
    await _ring_ws_uri_without_connection(edge, sipp, expected_code=None)


async def _ring_ws_uri_without_connection(under_test: EdgeUnderTest, sipp: SippLauncher,
                                          expected_code: int | None) -> None:
    stack, dispatcher = under_test.stack, under_test.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(
        f.call_id, "o1", "agent-9", "sip:agent-9@k3jd8a0x.invalid;transport=ws", 30.0))
    caller = sipp.start("caller_answered_bye", name="caller", remote_port=under_test.port, service="support",
                        pause_ms=3000)
    loop = asyncio.get_running_loop()
    await dispatcher.wait_for("media_answered", 20.0)
    rung = loop.time()
    failed = await dispatcher.wait_for("agent_failed", 5.0)
    assert loop.time() - rung < 1.0
    assert failed.data["agent_id"] == "agent-9"
    assert failed.data["reason"] == "unreachable" and failed.data["code"] == expected_code
    await expect_success(caller)


def test_closing_a_phone_stops_every_chromium_process_it_started(sipjs: None) -> None:
    # Chromium's zygote, renderers and GPU process are its children in its own process group: a
    # signal to the browser process alone left some of them running after failed tests
    phone = BrowserPhone(PhoneConfig(server=f"ws://{LOOPBACK}:9", aor="sip:nobody@callers.invalid")).start()
    proc = phone._proc
    assert proc is not None
    # the page ran (its first report: the connection to a closed port failed), so its renderer is
    # up; counted before, Debian's chromium wrapper script's own short-lived commands could be
    # taken for Chromium's processes
    phone.wait_for(lambda _event: True, 30, "any report of the page")
    started = group_members(proc.pid)
    assert len(started) >= 2, f"chromium started no child processes: {started}"
    phone.close()
    assert group_members(proc.pid) == []
    assert proc.returncode is not None


ORPHANED = """
import sys, time
from callcenter_dev.browser import BrowserPhone, PhoneConfig
phone = BrowserPhone(PhoneConfig(server="ws://127.0.0.1:9", aor="sip:nobody@callers.invalid")).start()
phone.wait_for(lambda _event: True, 30, "any report of the page")   # its renderer is up
print(phone._proc.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux's setpriv is not installed")
def test_a_phone_whose_test_process_is_killed_takes_its_chromium_with_it(sipjs: None) -> None:
    # a test killed by a timeout runs no close(): the browser must not outlive it
    child = subprocess.Popen([sys.executable, "-c", ORPHANED], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        pgid = int(child.stdout.readline())
        started = group_members(pgid)
        assert len(started) >= 2, f"chromium started no child processes: {started}"
    finally:
        child.kill()
        child.wait(10)
    deadline = time.monotonic() + 15
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(pgid) == []
