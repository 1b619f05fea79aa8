"""Whole-system test of RFC 4028 session timers: every service a real process, SIPp as caller and
agent phone. A caller with session timers that vanishes (stops answering, never sends BYE) is ended
by the edge when its session interval runs out: CDR reason session_expired, the agent is freed.

The edge runs a 4 s session interval (Min-SE 2 s, allowed under the RFC's 90 s by
CC_SIP_SESSION_SHORT_FOR_TESTS).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_harness import agent, caller, flow, ok, only_call, ring_before_media, sip, start, started_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow
INTERVAL_S = 4


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from started_system(tmp_path_factory, "limits",
                              common_env={"CC_RING_TIMEOUT_S": "5", "CC_WRAPUP_S": "1"},
                              edge_env={"CC_SIP_SESSION_EXPIRES_S": str(INTERVAL_S), "CC_SIP_SESSION_MIN_SE_S": "2",
                                        "CC_SIP_SESSION_SHORT_FOR_TESTS": "true"})


def test_vanished_caller_is_ended_and_its_agent_freed_within_the_interval(system: WholeSystem,
                                                                          peers: list[Sipp]) -> None:
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(sip("agent_timer_uas.xml")))
    flow(system, "st-vanish", queue)
    agent(system, "sv-1", "st-vanish", phone)
    system.login("sv-1")
    with ring_before_media(system):
        c = start(peers, caller(system, "caller_timer_vanishes.xml", "st-vanish"))
        call_id = only_call(system, "st-vanish")
        wait_for(lambda: system.agent_state("sv-1") == "in_call", 10, "the agent in the call", system)
        # the caller answers no refresh: at the interval's end the edge hangs up both legs
        wait_for(lambda: system.agent_state("sv-1") in ("wrap_up", "free"), INTERVAL_S + 3,
                 "the agent freed by the session expiry", system)
        ok(c, system)       # the caller got the edge's BYE
        ok(phone, system)   # ... and so did the agent
        cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("answered", "edge", "session_expired"), cdr
    assert (INTERVAL_S - 1) * 1000 <= cdr["talk_ms"] <= (INTERVAL_S + 2) * 1000, cdr
    wait_for(lambda: system.agent_state("sv-1") == "free", 5, "the agent free after wrap-up", system)
    assert system.api.post("/v1/agents/sv-1/logout").status_code == 200
