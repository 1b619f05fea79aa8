"""Whole-system tests of a flow's maximum call duration and of a caller's late offer: every service
a real process, SIPp as caller, media and agent phone (the edge's session timers at their default,
1800 s, out of the way).

- a flow's max_call_duration_s hangs up a connected call at the limit: CDR reason max_duration;
- a caller with a late offer (INVITE without SDP) takes the first call path to an agent; one whose
  ACK carries no answer ends with CDR reason caller_no_sdp.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_harness import agent, caller, flow, ok, only_call, ring_before_media, sip, start, types, whole_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from whole_system(tmp_path_factory, "limits", ring_timeout_s=5)


def test_flow_maximum_call_duration_hangs_up_a_connected_call(system: WholeSystem, peers: list[Sipp]) -> None:
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(sip("agent_early_uas.xml")))
    flow(system, "st-maxdur", queue, max_call_duration_s=2)
    agent(system, "sm-1", "st-maxdur", phone)
    system.login("sm-1")
    with ring_before_media(system):
        c = start(peers, caller(system, "caller_answered_wait_bye.xml", "st-maxdur"))
        call_id = only_call(system, "st-maxdur")
        ok(c, system)       # BYE from the edge at the limit
        ok(phone, system)
        cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("answered", "edge", "max_duration"), cdr
    assert 2000 <= cdr["talk_ms"] <= 4000, cdr
    wait_for(lambda: system.agent_state("sm-1") == "free", 5, "the agent free again", system)
    assert system.api.post("/v1/agents/sm-1/logout").status_code == 200


def test_late_offer_caller_first_call_path(system: WholeSystem, peers: list[Sipp]) -> None:
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(scenario("agent.xml")))
    flow(system, "st-late", queue)
    agent(system, "sl-1", "st-late", phone)
    c = start(peers, caller(system, "caller_late_offer_reinvited_bye.xml", "st-late", pause_ms=1000))
    call_id = only_call(system, "st-late")
    wait_for(lambda: "call.queued" in types(system, call_id), 10, "the late-offer caller queued", system)
    system.login("sl-1")
    ok(c, system)       # our 200 had the queue's offer, then one re-INVITE with the agent's
    ok(phone, system)
    ok(queue, system)
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"], cdr["agent_id"]) == ("answered", "caller", "bye", "sl-1")
    assert cdr["talk_ms"] >= 900, cdr
    assert types(system, call_id) == ["call.arrived", "call.queued", "call.offered", "call.connected",
                                      "call.ended"], types(system, call_id)
    assert system.api.post("/v1/agents/sl-1/logout").status_code == 200


def test_late_offer_caller_whose_ack_has_no_answer_ends_with_a_cdr_reason(system: WholeSystem,
                                                                          peers: list[Sipp]) -> None:
    queue = start(peers, Sipp(sip("media_late_unanswered_uas.xml")))
    flow(system, "st-late-noanswer", queue)
    c = start(peers, caller(system, "caller_late_offer_no_answer.xml", "st-late-noanswer"))
    call_id = only_call(system, "st-late-noanswer")
    ok(c, system)       # the edge's BYE after the ACK without an answer
    ok(queue, system)   # the queue media got its ACK, then BYE
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "edge", "caller_no_sdp"), cdr
