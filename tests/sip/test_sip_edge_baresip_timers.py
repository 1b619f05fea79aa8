"""Session timers (RFC 4028) with a real softphone: `baresip` 1.0.0 (Debian) as caller and as agent,
the edge on a 4 s session interval (Min-SE 2 s, `short_for_tests`).

What baresip does (each a finding): it neither sends nor answers the timer headers (no Supported:
timer, no Session-Expires; its SIP stack, libre, has no RFC 4028). So:
- as caller it leaves the refresher to the edge (refresher=uas, without Require: timer); its Allow
  has no UPDATE, so the edge refreshes it by re-INVITE with the SDP it gave, which baresip answers
  200 (without Session-Expires, being no party to timers: the edge keeps refreshing): the call
  outlives the interval;
- as agent its 200 has no Session-Expires, so that leg has no session timer (RFC 4028 7.2); a
  vanished baresip agent is found by the other mechanisms (the caller's leg, max_call_duration_s).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_harness import LOOPBACK, ScriptedDispatcher, SippLauncher, expect_success
from test_sip_edge_baresip import Baresip

from callcenter_sip_edge.session_options import SessionTimerOptions
from callcenter_sip_edge.sip_stack import SipStack

pytestmark = pytest.mark.skipif(shutil.which("baresip") is None,
                                reason="baresip is not installed (apt-get install baresip)")

INTERVAL_S = 4


@pytest.fixture
def phones() -> Iterator[list[Baresip]]:
    started: list[Baresip] = []
    yield started
    for phone in started:
        phone.stop()


@pytest.fixture
async def edge_with_timers():
    dispatcher = ScriptedDispatcher()
    stack = SipStack(host=LOOPBACK, port=0, on_fact=dispatcher.on_fact, loop=asyncio.get_running_loop(),
                     session_timers=SessionTimerOptions(expires_s=INTERVAL_S, min_se_s=2, short_for_tests=True))
    stack.start()
    assert stack.bound_address is not None
    try:
        yield stack, dispatcher, stack.bound_address[1]
    finally:
        stack.stop()


async def test_baresip_caller_is_refreshed_by_the_edge_past_the_interval(edge_with_timers, sipp: SippLauncher,
                                                                          tmp_path: Path,
                                                                          phones: list[Baresip]) -> None:
    stack, dispatcher, port = edge_with_timers
    agent = sipp.start("agent_timer_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
    phone = Baresip(tmp_path / "caller", f"<sip:ann@{LOOPBACK}>;regint=0", f"/dial sip:support@{LOOPBACK}:{port}",
                    quit_after_s=2 * INTERVAL_S)
    phones.append(phone)
    started = time.monotonic()

    await expect_success(agent)
    ended = await dispatcher.wait_for("call_ended", timeout_s=4 * INTERVAL_S)
    trace = phone.output()
    assert ended.data["by"] == "caller", trace[-3000:]         # baresip quit and hung up, not an expiry
    assert time.monotonic() - started > 1.5 * INTERVAL_S
    invite = trace.split("INVITE sip:support@", 1)[1].split("\n\n", 1)[0]
    assert "Session-Expires" not in invite and "timer" not in invite    # baresip does not take part
    assert "UPDATE" not in trace.split("Allow:", 1)[1].split("\n", 1)[0]   # baresip does not allow UPDATE ...
    refreshes = trace.split("INVITE sip:ann-")[1:]                        # ... so the edge re-INVITEs it
    assert len(refreshes) >= 2, trace[-3000:]
    assert all("Session-Expires: 4;refresher=uac" in r.split("\n\n", 1)[0] for r in refreshes)
    assert all("SIP/2.0 200 OK" in r for r in refreshes)                  # ... and baresip answers them


async def test_baresip_agent_leg_has_no_timer(edge_with_timers, sipp: SippLauncher, tmp_path: Path,
                                              phones: list[Baresip]) -> None:
    stack, dispatcher, port = edge_with_timers
    phone = Baresip(tmp_path / "agent", f"<sip:agent@{LOOPBACK}>;regint=0;answermode=auto",
                    quit_after_s=3 * INTERVAL_S)
    phones.append(phone)
    await asyncio.to_thread(phone.wait_listening)
    uri = f"sip:agent@{LOOPBACK}:{phone.port}"
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", uri, 10.0))
    # the caller refreshes nothing and is refreshed by UPDATE (it allows it), for 7 s
    caller = sipp.start("caller_timer_refreshed_bye", name="caller", remote_port=port, service="support",
                        pause_ms=0)

    await expect_success(caller)
    ended = await dispatcher.wait_for("call_ended")
    assert ended.data["by"] == "caller"
    trace = phone.output()
    invite = trace.split("INVITE sip:agent@", 1)[1].split("\n\n", 1)[0]
    assert f"Session-Expires: {INTERVAL_S};refresher=uac" in invite      # the edge asked for a timer
    assert "UPDATE sip:agent@" not in trace                               # none agreed: no refresh
