"""RFC 4028 session timers on the caller's and the agent's leg, with a 4 s interval (Min-SE 2 s,
allowed under the RFC's 90 s by `short_for_tests`), SIPp as caller and agent.

The edge refreshes both legs here (the caller leaves the refresher open, the agent echoes ours),
by UPDATE since both peers allow it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sip_harness import (
    EdgeUnderTest,
    SippLauncher,
    SippProcess,
    agent_at_once,
    edge_sent_problems,
    expect_success,
    support_caller,
)

from callcenter_sip_edge.session_options import SessionTimerOptions

INTERVAL_S = 4
TIMERS = SessionTimerOptions(expires_s=INTERVAL_S, min_se_s=2, short_for_tests=True)


def _start(make_edge: Callable[..., EdgeUnderTest]) -> EdgeUnderTest:
    return make_edge(session_timers=TIMERS)


def _call(make_edge: Callable[..., EdgeUnderTest], sipp: SippLauncher, agent_scenario: str, caller_scenario: str,
          pause_ms: int = 0) -> tuple[EdgeUnderTest, SippProcess, SippProcess]:
    """An edge with the timers, an agent phone it rings at once, and a caller: (edge, agent, caller)."""
    edge = _start(make_edge)
    agent = agent_at_once(edge, sipp, agent_scenario)
    return edge, agent, support_caller(sipp, edge, caller_scenario, pause_ms)


async def _expired_after_s(edge: EdgeUnderTest) -> float:
    """Wait for the call to end by session expiry; how long after the agent answered it ended (s)."""
    answered = await edge.dispatcher.wait_for("agent_answered")
    ended = await edge.dispatcher.wait_for("call_ended", timeout_s=3 * INTERVAL_S)
    assert ended.data == {"by": "edge", "reason": "session_expired", "code": None}
    return (ended.ts_ms - answered.ts_ms) / 1000


async def test_refreshes_keep_a_call_up_past_its_interval(make_edge: Callable[..., EdgeUnderTest],
                                                         sipp: SippLauncher) -> None:
    edge, agent, caller = _call(make_edge, sipp, "agent_timer_uas", "caller_timer_refreshed_bye")
    stack, dispatcher = edge.stack, edge.dispatcher
    started = time.monotonic()

    await expect_success(caller, agent)
    ended = await dispatcher.wait_for("call_ended")
    # three refreshes of the caller (at 2, 4 and 6 s) before its BYE: the call lived > 1.5 intervals
    assert time.monotonic() - started > 1.5 * INTERVAL_S
    assert ended.data == {"by": "caller", "reason": "bye", "code": None}
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]
    # the agent's leg was refreshed too, by UPDATE carrying Session-Expires
    agent_updates = [m for m in agent.messages() if m.is_request("UPDATE")]
    assert len(agent_updates) >= 2
    assert all(f"Session-Expires: {INTERVAL_S};refresher=uac" in m.text for m in agent_updates)
    invite = next(m for m in agent.messages() if m.is_request("INVITE"))
    assert "Supported: timer" in invite.text and "Min-SE: 2" in invite.text
    assert edge_sent_problems(caller, agent) == []
    assert stack.active_calls() == 0


async def test_caller_that_vanishes_is_ended_within_the_interval(make_edge: Callable[..., EdgeUnderTest],
                                                                 sipp: SippLauncher) -> None:
    """The caller stops answering (no BYE): its refresh goes unanswered, the session expires at the
    interval's end, both legs get BYE and the call ends `session_expired` (the agent is freed)."""
    edge, agent, caller = _call(make_edge, sipp, "agent_timer_uas", "caller_timer_vanishes")
    stack = edge.stack

    lasted_s = await _expired_after_s(edge)
    assert INTERVAL_S - 1.5 <= lasted_s <= INTERVAL_S + 3, lasted_s
    await expect_success(caller, agent)   # both got the edge's BYE
    assert stack.active_calls() == 0


async def test_session_interval_below_min_se_gets_422(make_edge: Callable[..., EdgeUnderTest],
                                                       sipp: SippLauncher) -> None:
    edge = _start(make_edge)
    caller = support_caller(sipp, edge, "caller_timer_too_small", 0)
    await expect_success(caller)
    resp = next(m for m in caller.messages() if m.is_response(422, "INVITE"))
    assert "Min-SE: 2" in resp.text
    assert edge.dispatcher.kinds() == []
    assert edge.stack.active_calls() == 0


async def test_refresh_by_reinvite_when_the_caller_does_not_allow_update(
        make_edge: Callable[..., EdgeUnderTest], sipp: SippLauncher) -> None:
    edge, agent, caller = _call(make_edge, sipp, "agent_timer_uas", "caller_timer_reinvite_refreshed_bye")
    dispatcher = edge.dispatcher

    await expect_success(caller, agent)
    ended = await dispatcher.wait_for("call_ended")
    assert ended.data == {"by": "caller", "reason": "bye", "code": None}
    refreshes = [m for m in caller.messages() if m.is_request("INVITE") and not m.sent]
    first_answer = next(m for m in caller.messages() if m.is_response(200, "INVITE") and not m.sent)
    # the refresh re-offers the SDP the caller already has (the agent's answer): nothing changes
    assert len(refreshes) == 2 and all(r.body == first_answer.body for r in refreshes)
    assert [m for m in caller.messages() if m.is_request("UPDATE")] == []
    assert edge_sent_problems(caller, agent) == []


async def test_caller_as_refresher_keeps_its_call_up(make_edge: Callable[..., EdgeUnderTest],
                                                    sipp: SippLauncher) -> None:
    """The caller chose refresher=uac: the edge sends it no refresh and answers its UPDATEs with
    Session-Expires; the call outlives the interval."""
    edge, agent, caller = _call(make_edge, sipp, "agent_timer_uas", "caller_timer_refresher_uac_bye")
    dispatcher = edge.dispatcher

    await expect_success(caller, agent)
    ended = await dispatcher.wait_for("call_ended")
    assert ended.data == {"by": "caller", "reason": "bye", "code": None}
    assert [m for m in caller.messages() if not m.sent and (m.is_request("UPDATE") or m.is_request("INVITE"))] == []


async def test_caller_as_refresher_that_stops_refreshing_is_ended(make_edge: Callable[..., EdgeUnderTest],
                                                                  sipp: SippLauncher) -> None:
    """No refresh from the refresher: the edge ends the call at the interval minus a third of it."""
    edge, agent, caller = _call(make_edge, sipp, "agent_timer_uas", "caller_timer_refresher_uac_stops")

    lasted_s = await _expired_after_s(edge)
    assert INTERVAL_S * 2 / 3 - 1 <= lasted_s <= INTERVAL_S * 2 / 3 + 2.5, lasted_s
    await expect_success(caller, agent)


async def test_caller_without_timers_that_vanishes_is_ended(make_edge: Callable[..., EdgeUnderTest],
                                                            sipp: SippLauncher) -> None:
    """A caller that knows nothing of timers gets them anyway, the edge refreshing (RFC 4028 9):
    when it stops answering (its refresh re-INVITE unanswered), the call ends at the interval."""
    edge, agent, caller = _call(make_edge, sipp, "agent_timer_uas", "caller_no_timer_vanishes")

    assert INTERVAL_S - 1.5 <= await _expired_after_s(edge) <= INTERVAL_S + 3
    await expect_success(caller, agent)
    ok_200 = next(m for m in caller.messages() if m.is_response(200, "INVITE") and not m.sent)
    assert "Require:" not in ok_200.text   # the caller does not support timers: not required of it


async def test_agent_that_vanishes_is_ended_within_the_interval(make_edge: Callable[..., EdgeUnderTest],
                                                               sipp: SippLauncher) -> None:
    """The agent's leg has its own timer: an agent phone that stops answering the refreshes ends
    the call (session_expired) although the caller keeps answering its own."""
    edge, agent, caller = _call(make_edge, sipp, "agent_timer_vanishes_uas", "caller_timer_waits_bye")
    stack = edge.stack

    assert INTERVAL_S - 1.5 <= await _expired_after_s(edge) <= INTERVAL_S + 3
    await expect_success(caller, agent)   # both got the edge's BYE
    assert stack.active_calls() == 0


async def test_agent_422_is_retried_with_its_min_se(make_edge: Callable[..., EdgeUnderTest],
                                                    sipp: SippLauncher) -> None:
    """RFC 4028 7.3: the agent's 422 says Min-SE 6; the edge INVITEs it again with Session-Expires
    6 and the call goes on (the agent is not reported as rejecting)."""
    edge, agent, caller = _call(make_edge, sipp, "agent_timer_422_uas", "caller_answered_bye", pause_ms=500)
    dispatcher = edge.dispatcher

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]
    invites = [m for m in agent.messages() if not m.sent and m.is_request("INVITE")]
    assert len(invites) == 2
    cseqs = [int(m.text.split("CSeq:")[1].split()[0]) for m in invites]
    assert cseqs[1] == cseqs[0] + 1   # a new transaction of the same call
    assert edge_sent_problems(caller, agent) == []
