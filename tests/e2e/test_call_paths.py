"""The call paths of the SIP edge, whole system: SIPp as caller, agents and media servers against a
private redis-server, the real dispatcher (Lua on Redis), the cdr-writer (SQLite) and the api.

The same paths run against a scripted dispatcher in tests/sip/; here every decision is the real
one. Each test asserts on what each SIPp saw (exit code 0 = its scenario, including every expected
CANCEL / BYE / ACK, completed), on the call.* events on the stream and on the CDR (GET /v1/cdrs).

Paths: caller CANCEL during the welcome, caller BYE while queued, caller CANCEL / BYE while the
agent rings; agent rejects (486, 603), does not answer (ring timeout), is unreachable -> the call
goes back to the queue and to the next agent; hold / resume (UPDATE, re-INVITE) relayed to the agent;
reject on no agents (480); dissuading with hang-up; ring-all.

One WholeSystem for the module; each test uses its own flow and agents.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from e2e_harness import (
    agent,
    agent_failures,
    caller,
    flow,
    has_event,
    messages,
    nothing_pending_or_dead,
    ok,
    only_call,
    queued_call,
    ring_before_media,
    sip,
    start,
    types,
    whole_system,
)

from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

RING_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from whole_system(tmp_path_factory, "paths", RING_TIMEOUT_S)


# ---------------------------------------------------------------------------- 1. the caller leaves
def test_caller_cancels_during_the_welcome(system: WholeSystem, peers: list[Sipp]) -> None:
    # the welcome media server rings and never answers: the caller gives up (CANCEL after 500 ms)
    welcome = start(peers, Sipp(sip("agent_noanswer_uas.xml")))
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    flow(system, "p-cancel-welcome", queue, welcome_uri=f"sip:welcome@{welcome.uri_host}")
    c = start(peers, caller(system, "caller_cancel.xml", "p-cancel-welcome"))
    ok(c, system)
    ok(welcome, system)  # the welcome leg got CANCEL (then 487, ACK)
    call_id = only_call(system, "p-cancel-welcome")
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"]) == ("abandoned", "caller"), cdr
    assert cdr["agent_id"] is None
    assert types(system, call_id) == ["call.arrived", "call.abandoned", "call.ended"], types(system, call_id)
    assert "INVITE" not in queue.scenario_log()


def test_caller_hangs_up_while_queued(system: WholeSystem, peers: list[Sipp]) -> None:
    welcome = start(peers, Sipp(scenario("media_welcome.xml"), extra=["-d", "200"]))
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(scenario("agent.xml")))
    flow(system, "p-bye-queued", queue, welcome_uri=f"sip:welcome@{welcome.uri_host}")
    agent(system, "pq-1", "p-bye-queued", phone)  # provisioned, never logged in
    # welcome answers the caller, then one re-INVITE to the queue media; BYE 1 s later
    c = start(peers, caller(system, "caller_reinvited_1_bye.xml", "p-bye-queued", pause_ms=1000))
    ok(c, system)
    ok(welcome, system)
    ok(queue, system)  # the queue leg got BYE when the caller left
    call_id = only_call(system, "p-bye-queued")
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("abandoned", "caller", "bye"), cdr
    assert cdr["wait_ms"] >= 900
    assert types(system, call_id) == ["call.arrived", "call.welcome_ended", "call.queued", "call.abandoned",
                                      "call.ended"], types(system, call_id)
    assert "INVITE" not in phone.scenario_log()
    wait_for(lambda: not system.redis.sismember(system.keys.calls, call_id), 5, "the call forgotten", system)


def test_caller_cancels_while_the_agent_rings(system: WholeSystem, peers: list[Sipp]) -> None:
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(sip("agent_noanswer_uas.xml")))
    flow(system, "p-cancel-ring", queue)
    agent(system, "pc-1", "p-cancel-ring", phone)
    system.login("pc-1")
    with ring_before_media(system):
        # a free agent: its phone rings with the caller's offer; the caller CANCELs after 500 ms
        c = start(peers, caller(system, "caller_cancel.xml", "p-cancel-ring"))
        ok(c, system)
        ok(phone, system)  # the phone saw CANCEL, answered it 200 and the INVITE 487
        call_id = only_call(system, "p-cancel-ring")
        cdr = system.wait_for_cdr(call_id)
        assert (cdr["outcome"], cdr["ended_by"]) == ("abandoned", "caller"), cdr
        assert types(system, call_id) == ["call.arrived", "call.offered", "call.abandoned", "call.ended"], \
            types(system, call_id)
        wait_for(lambda: system.agent_state("pc-1") == "free", 5, "the agent free again", system)
        assert system.api.post("/v1/agents/pc-1/logout").status_code == 200


def test_caller_hangs_up_while_the_agent_rings(system: WholeSystem, peers: list[Sipp]) -> None:
    welcome = start(peers, Sipp(scenario("media_welcome.xml"), extra=["-d", "200"]))
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(sip("agent_noanswer_uas.xml")))
    flow(system, "p-bye-ring", queue, welcome_uri=f"sip:welcome@{welcome.uri_host}")
    agent(system, "pb-1", "p-bye-ring", phone)
    system.login("pb-1")
    # answered by the welcome; after it the free agent rings; the caller hangs up (BYE) at 1 s,
    # before the ring timeout (2 s)
    c = start(peers, caller(system, "caller_answered_bye.xml", "p-bye-ring", pause_ms=1000))
    ok(c, system)
    ok(phone, system)  # CANCEL, 487, ACK
    ok(welcome, system)
    call_id = only_call(system, "p-bye-ring")
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("abandoned", "caller", "bye"), cdr
    assert not has_event(system, call_id, "call.agent_failed")  # the caller left, not the agent
    wait_for(lambda: system.agent_state("pb-1") == "free", 5, "the agent free again", system)
    assert "INVITE" not in queue.scenario_log()
    assert system.api.post("/v1/agents/pb-1/logout").status_code == 200


# ---------------------------------------------------------------------------- 2. the agent fails
def test_agents_reject_with_486_and_603_the_call_stays_on_queue_media_and_a_third_answers(
        system: WholeSystem, peers: list[Sipp]) -> None:
    f = "p-reject"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    busy = start(peers, Sipp(sip("agent_busy_uas.xml")))
    declines = start(peers, Sipp(sip("agent_declines_uas.xml")))
    phone = start(peers, Sipp(scenario("agent.xml")))
    flow(system, f, queue)
    # a long wrap-up (the penalty for a rejected offer) keeps them from being offered the call again
    agent(system, "pr-1", f, busy, wrapup_s=60)
    agent(system, "pr-2", f, declines, wrapup_s=60)
    agent(system, "pr-3", f, phone)
    c, call_id = queued_call(system, peers, "caller.xml", f, 500)

    system.login("pr-1")
    wait_for(lambda: has_event(system, call_id, "call.agent_failed", agent_id="pr-1"), 10, "486 from pr-1", system)
    ok(busy, system)  # 486, ACK
    system.login("pr-2")
    wait_for(lambda: has_event(system, call_id, "call.agent_failed", agent_id="pr-2"), 10, "603 from pr-2", system)
    ok(declines, system)  # 603, ACK
    assert queue.running(), "the queue media leg must stay up while agents are tried"
    assert system.agent_state("pr-1") == "wrap_up" and system.agent_state("pr-2") == "wrap_up"

    system.login("pr-3")
    ok(c, system)
    ok(phone, system)
    ok(queue, system)  # one queue leg for the whole wait, released with BYE once pr-3 answered
    assert queue.scenario_log().count("INVITE ") == 1, queue.scenario_log()
    assert agent_failures(system, call_id) == [("pr-1", "busy"), ("pr-2", "rejected")]
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"], cdr["ended_by"]) == ("answered", "pr-3", "caller"), cdr
    # each failed offer puts the call back at the head of the queue (position 0), on the same queue leg
    assert types(system, call_id) == ["call.arrived", "call.queued", "call.offered", "call.agent_failed",
                                      "call.queued", "call.offered", "call.agent_failed", "call.queued",
                                      "call.offered", "call.connected", "call.ended"], types(system, call_id)
    assert [d["position"] for t, d in system.events(call_id) if t == "call.queued"] == [0, 0, 0]
    for a in ("pr-1", "pr-2", "pr-3"):
        assert system.api.post(f"/v1/agents/{a}/logout").status_code == 200


def test_agent_not_answering_within_the_ring_timeout_is_cancelled_and_the_next_agent_answers(
        system: WholeSystem, peers: list[Sipp]) -> None:
    f = "p-noanswer"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    slow = start(peers, Sipp(sip("agent_noanswer_uas.xml")))
    phone = start(peers, Sipp(scenario("agent.xml")))
    flow(system, f, queue)
    agent(system, "pn-1", f, slow, wrapup_s=60)
    agent(system, "pn-2", f, phone)
    c, call_id = queued_call(system, peers, "caller.xml", f, 500)
    system.login("pn-1")
    wait_for(lambda: has_event(system, call_id, "call.offered", agent_id="pn-1"), 5, "pn-1 rung", system)
    system.login("pn-2")  # free while pn-1 rings: it gets the call when pn-1's offer fails

    ok(slow, system, RING_TIMEOUT_S + 10)  # CANCEL at the ring timeout, 487, ACK
    ok(c, system)
    ok(phone, system)
    ok(queue, system)
    assert agent_failures(system, call_id) == [("pn-1", "no_answer")]
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"]) == ("answered", "pn-2"), cdr
    assert cdr["wait_ms"] >= RING_TIMEOUT_S * 1000
    assert system.agent_state("pn-1") == "wrap_up"
    for a in ("pn-1", "pn-2"):
        assert system.api.post(f"/v1/agents/{a}/logout").status_code == 200


def test_unreachable_agent_fails_and_the_next_agent_answers(system: WholeSystem, peers: list[Sipp]) -> None:
    f = "p-unreachable"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(scenario("agent.xml")))
    flow(system, f, queue)
    agent(system, "pu-1", f, f"sip:pu-1@127.0.0.1:{free_port(socket.SOCK_DGRAM)}", wrapup_s=60)  # nothing there
    agent(system, "pu-2", f, phone)
    c, call_id = queued_call(system, peers, "caller.xml", f, 500)
    system.login("pu-1")
    wait_for(lambda: has_event(system, call_id, "call.offered", agent_id="pu-1"), 5, "pu-1 offered", system)
    system.login("pu-2")

    ok(c, system)
    ok(phone, system)
    ok(queue, system)
    assert agent_failures(system, call_id) == [("pu-1", "unreachable")]
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"]) == ("answered", "pu-2"), cdr
    for a in ("pu-1", "pu-2"):
        assert system.api.post(f"/v1/agents/{a}/logout").status_code == 200


# ---------------------------------------------------------------------------- 3. hold / resume
def test_caller_hold_and_resume_reach_the_agent_and_its_answers_come_back(
        system: WholeSystem, peers: list[Sipp]) -> None:
    f = "p-hold"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(sip("agent_early_reinvited_uas.xml")), trace_msg=True)
    flow(system, f, queue)
    agent(system, "ph-1", f, phone)
    system.login("ph-1")
    with ring_before_media(system):  # the agent gets the caller's offer
        # UPDATE (hold, a=sendonly) then re-INVITE (resume): each answered with SDP (checked by the scenario)
        c = start(peers, caller(system, "caller_update_reinvite.xml", f, pause_ms=500), trace_msg=True)
        ok(c, system)
        ok(phone, system)  # two re-INVITEs relayed from the caller, each answered, then BYE
        trace = messages(phone)
        assert trace.count("INVITE sip:") == 3 and "a=sendonly" in trace, trace[-3000:]
        assert "o=agent 7 8" in messages(c) and "o=agent 7 9" in messages(c)  # the agent's answers came back
        call_id = only_call(system, f)
        cdr = system.wait_for_cdr(call_id)
        assert (cdr["outcome"], cdr["agent_id"], cdr["ended_by"]) == ("answered", "ph-1", "caller"), cdr
        assert types(system, call_id) == ["call.arrived", "call.offered", "call.connected", "call.ended"]
        assert system.api.post("/v1/agents/ph-1/logout").status_code == 200


# ---------------------------------------------------------------------------- 4. turned away
def test_reject_on_no_agents_the_caller_gets_480(system: WholeSystem, peers: list[Sipp]) -> None:
    f = "p-noagents"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    flow(system, f, queue)  # a skill nobody has
    r = system.api.patch("/v1/config", json={"reject_on_no_agents": True})
    assert r.status_code == 200, r.text
    try:
        c = start(peers, caller(system, "caller_expect_480.xml", f))
        ok(c, system)
        assert "480 phrase=" in c.scenario_log(), c.scenario_log()
    finally:
        assert system.api.patch("/v1/config", json={"reject_on_no_agents": False}).status_code == 200
    call_id = only_call(system, f)
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("rejected", "system", "no_agents"), cdr
    rejected = [d for t, d in system.events(call_id) if t == "call.rejected"]
    assert [(d["code"], d["reason"]) for d in rejected] == [(480, "no_agents")]
    assert "INVITE" not in queue.scenario_log()


def test_dissuading_with_hangup_the_second_caller_hears_the_message_then_is_hung_up(
        system: WholeSystem, peers: list[Sipp]) -> None:
    f = "p-dissuade"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    message = start(peers, Sipp(scenario("media_welcome.xml"), extra=["-d", "300"]))
    flow(system, f, queue, dissuading_uri=f"sip:dissuading@{message.uri_host}", dissuading_qsize_th=1,
         dissuading_hangup=True)
    first = start(peers, caller(system, "caller_answered_bye.xml", f, pause_ms=2500))
    first_id = only_call(system, f)
    wait_for(lambda: has_event(system, first_id, "call.queued"), 10, "the first caller queued", system)

    second = start(peers, caller(system, "caller_answered_wait_bye.xml", f))
    ok(second, system)   # answered by the dissuading media, then BYE from the edge
    ok(message, system)  # played its message and hung up
    [second_id] = [cid for cid in system.call_ids_of_flow(f) if cid != first_id]
    assert "INVITE" in message.scenario_log()
    cdr = system.wait_for_cdr(second_id)
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("dissuaded", "system", "dissuaded"), cdr
    dissuaded = [d for t, d in system.events(second_id) if t == "call.dissuaded"]
    assert [d["rule"] for d in dissuaded] == ["queue_size"]
    assert "call.queued" not in types(system, second_id)

    ok(first, system)   # the first caller was never disturbed; it hangs up itself
    ok(queue, system)
    assert queue.scenario_log().count("INVITE ") == 1
    cdr = system.wait_for_cdr(first_id)
    assert (cdr["outcome"], cdr["ended_by"]) == ("abandoned", "caller"), cdr


# ---------------------------------------------------------------------------- 5. ring-all
def test_ring_all_the_quick_agent_answers_the_slow_one_gets_cancel(system: WholeSystem, peers: list[Sipp]) -> None:
    f = "p-ringall"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    quick = start(peers, Sipp(scenario("agent.xml")))
    slow = start(peers, Sipp(sip("agent_noanswer_uas.xml")))
    flow(system, f, queue, strategy="ring-all")
    agent(system, "pa-quick", f, quick)
    agent(system, "pa-slow", f, slow)
    system.login("pa-quick", "pa-slow")
    c = start(peers, caller(system, "caller.xml", f, pause_ms=500))
    ok(c, system)
    ok(quick, system)
    ok(slow, system)  # CANCEL when the quick one answered
    call_id = only_call(system, f)
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"], cdr["ended_by"]) == ("answered", "pa-quick", "caller"), cdr
    assert agent_failures(system, call_id) == [("pa-slow", "answered_elsewhere")]
    # a miss in ring-all costs no wrap-up: the slow agent is free again at once
    wait_for(lambda: system.agent_state("pa-slow") == "free", 3, "the slow agent free", system)
    for a in ("pa-quick", "pa-slow"):
        assert system.api.post(f"/v1/agents/{a}/logout").status_code == 200


def test_nothing_pending_or_dead(system: WholeSystem) -> None:
    """After every path: each report and event handled and acknowledged, nothing dead, no live call."""
    nothing_pending_or_dead(system)
