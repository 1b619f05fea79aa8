"""More call paths of the SIP edge, whole system (SIPp peers, private redis-server, the real
dispatcher, api, cdr-writer with SQLite, sip-edge as processes), after tests/e2e/test_call_paths.py:

- hold / resume from the agent's side while talking: the agent's re-INVITE and UPDATE reach the
  caller, the caller's answers come back to the agent; the call stays one connected call;
- ring-all where a second agent's 200 crosses the edge's CANCEL: the late agent gets ACK then BYE,
  the call is connected to the first agent once, the late agent is free again, one CDR;
- out-of-dialog: a carrier's OPTIONS probe gets 200 and leaves no trace; an INVITE with
  Max-Forwards: 0 gets 483 and creates no call although an agent is free for it;
- a caller behind a proxy (two Vias, a Record-Route): responses keep both Vias, and every request
  the edge sends in the dialog (the re-INVITEs of the real routing, the BYE when the agent hangs up)
  goes to the proxy with the route set, never to the caller's own address.

The caller hanging up while talking (its BYE, CDR answered with talk time) is covered by
tests/e2e/test_first_call.py.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_harness import (
    agent,
    agent_failures,
    caller,
    flow,
    messages,
    nothing_pending_or_dead,
    ok,
    only_call,
    ring_before_media,
    sip,
    start,
    types,
    whole_system,
)

from callcenter.contract.codec import decode
from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

RING_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from whole_system(tmp_path_factory, "more", RING_TIMEOUT_S)


def received(sipp: Sipp) -> list[str]:
    """The SIP messages a SIPp received, in order, retransmissions left out (its -trace_msg file)."""
    out = []
    for part in re.split(r"^-{20,} .*$", messages(sipp), flags=re.M):
        m = re.match(r"\s*UDP message received \[\d+\] bytes :\n\n(.*)", part, flags=re.S)
        if m and m.group(1).strip("\n") not in out:  # a retransmission is the same bytes again
            out.append(m.group(1).strip("\n"))
    return out


def header(msg: str, name: str) -> list[str]:
    head = msg.replace("\r\n", "\n").split("\n\n")[0].split("\n")[1:]
    return [ln.split(":", 1)[1].strip() for ln in head if ln.split(":", 1)[0].strip().lower() == name.lower()]


def agent_transitions(system: WholeSystem, agent_id: str) -> list[tuple[str, str]]:
    return [(d["from"], d["to"]) for t, d in system.events() if t == "agent.state_changed"
            and d["agent_id"] == agent_id]


def reports_from(system: WholeSystem, source_port: int) -> list[dict[str, Any]]:
    """The call_arrived reports of the edge for INVITEs that came from one SIPp (by its port)."""
    out = []
    entries: Any = system.redis.xrange(system.keys.reports)
    for eid, fields in entries:
        e = decode(fields, eid)
        if e.type == "report.call_arrived" and str(e.data.get("source", "")).endswith(f":{source_port}"):
            out.append(e.data)
    return out


def logout(system: WholeSystem, *agent_ids: str) -> None:
    for a in agent_ids:
        assert system.api.post(f"/v1/agents/{a}/logout").status_code == 200


# ---------------------------------------------------------------------------- 1. agent-side hold / resume
@pytest.mark.parametrize("path", ["agent_free", "queued_first"])
def test_agent_hold_and_resume_reach_the_caller_and_its_answers_come_back(
        system: WholeSystem, peers: list[Sipp], path: str) -> None:
    """agent_free: the agent answers the caller's own offer (early offer). queued_first: the caller
    waits on queue media, the agent logs in, its 200 carries the offer, the caller is re-INVITEd."""
    f = f"m-agent-hold-{path}"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(sip("agent_holds_and_resumes_uas.xml")), trace_msg=True)
    flow(system, f, queue)
    agent(system, f"mh-{path}", f, phone)
    with ring_before_media(system, on=path == "agent_free"):
        if path == "agent_free":
            system.login(f"mh-{path}")
        c = start(peers, caller(system, "caller_answers_reinvites_waits_for_bye.xml", f), trace_msg=True)
        call_id = only_call(system, f)
        if path == "queued_first":
            wait_for(lambda: "call.queued" in types(system, call_id), 10, "the call queued", system)
            system.login(f"mh-{path}")

        ok(phone, system)   # its hold re-INVITE and resume UPDATE were answered with the caller's SDP
        offered_sdp = "INVITE sdp=m=audio" in phone.scenario_log()
        assert offered_sdp == (path == "agent_free"), phone.scenario_log()
        ok(c, system)       # answered every re-INVITE, then got the edge's BYE
        if path == "queued_first":
            ok(queue, system)   # released with BYE once the agent was connected
        else:
            assert "INVITE" not in queue.scenario_log()
        to_caller = [m for m in received(c) if m.startswith("INVITE ")]
        # the agent's hold offer and resume offer reached the caller (as re-INVITEs), in that order
        held = [m for m in to_caller if "o=agent 7 8 " in m]
        resumed = [m for m in to_caller if "o=agent 7 9 " in m]
        assert len(held) == 1 and "a=sendonly" in held[0], to_caller
        assert len(resumed) == 1 and "a=sendrecv" in resumed[0], to_caller
        assert to_caller.index(held[0]) < to_caller.index(resumed[0])
        # ... and nothing else: the move to the agent (queued_first) and the two session changes
        assert len(to_caller) == (3 if path == "queued_first" else 2), [m.splitlines()[0] for m in to_caller]
        # the agent got the caller's answers (the scenario checks versions and directions; here, where)
        from_edge = [m for m in received(phone) if m.startswith("SIP/2.0 200")]
        assert any("CSeq: 1 INVITE" in m and "o=caller 1 8 " in m and "a=recvonly" in m for m in from_edge)
        assert any("CSeq: 2 UPDATE" in m and "o=caller 1 9 " in m for m in from_edge)

        cdr = system.wait_for_cdr(call_id)
        assert (cdr["outcome"], cdr["agent_id"], cdr["ended_by"]) == ("answered", f"mh-{path}", "agent"), cdr
        assert cdr["talk_ms"] >= 800, cdr  # hold 300 ms + resume 300 ms + 300 ms before the BYE
        expected = ["call.arrived", "call.offered", "call.connected", "call.ended"]
        if path == "queued_first":
            expected.insert(1, "call.queued")
        assert types(system, call_id) == expected   # a hold is not a new call state: one connected call
        wait_for(lambda: system.agent_state(f"mh-{path}") == "free", 5, "the agent free after wrap-up", system)
        logout(system, f"mh-{path}")


# ---------------------------------------------------------------------------- 2. ring-all: a 200 crossing the CANCEL
@pytest.mark.parametrize("path", ["agents_free", "after_welcome"])
def test_ring_all_a_200_crossing_the_cancel_gets_ack_and_bye_and_the_call_is_connected_once(
        system: WholeSystem, peers: list[Sipp], path: str) -> None:
    """agents_free: both phones get the caller's offer and the first 200 answers the caller.
    after_welcome: the caller is answered by the welcome media, the phones are rung without SDP and
    the first 200's offer goes to the caller in a re-INVITE. Either way, the second phone answers
    after the edge has cancelled it: that 200 must be ACKed and hung up, and go nowhere else."""
    f = f"m-race-{path}"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    quick = start(peers, Sipp(scenario("agent.xml")))                             # 180, 200 after 1 s
    late = start(peers, Sipp(sip("agent_answers_across_cancel_uas.xml")), trace_msg=True)
    welcome = None
    if path == "after_welcome":
        welcome = start(peers, Sipp(scenario("media_welcome.xml"), extra=["-d", "200"]))
    flow(system, f, queue, strategy="ring-all",
         **({"welcome_uri": f"sip:welcome@{welcome.uri_host}"} if welcome else {}))
    agent(system, f"mr-quick-{path}", f, quick)
    agent(system, f"mr-late-{path}", f, late)
    system.login(f"mr-quick-{path}", f"mr-late-{path}")
    with ring_before_media(system, on=path == "agents_free"):
        c = start(peers, caller(system, "caller.xml", f, pause_ms=1000), trace_msg=True)

        ok(late, system)    # CANCEL, then its own 200, then ACK and BYE from the edge, in that order
        ok(c, system)       # talked to the quick agent, hung up
        ok(quick, system)
        if welcome is not None:
            ok(welcome, system)
        assert "INVITE" not in queue.scenario_log()
        early_offer = "m=audio" if path == "agents_free" else ""
        assert late.scenario_log().splitlines() == [f"INVITE sdp={early_offer}", "CANCEL received", "ACK received",
                                                    "BYE received"], late.scenario_log()
        # the late phone's session never reached the caller: one answer (or one re-INVITE) from the quick one
        to_caller = received(c)
        assert not any("s=late-agent" in m for m in to_caller), to_caller
        agent_sdps = [m for m in to_caller if "s=callcenter-agent" in m]
        assert len(agent_sdps) == 1, [m.splitlines()[0] for m in to_caller]
        assert agent_sdps[0].startswith("SIP/2.0 200" if path == "agents_free" else "INVITE ")

        call_id = only_call(system, f)
        events = system.events(call_id)
        assert [d["agent_id"] for t, d in events if t == "call.connected"] == [f"mr-quick-{path}"], events
        assert agent_failures(system, call_id) == [(f"mr-late-{path}", "answered_elsewhere")]
        assert [t for t, _ in events].count("call.ended") == 1
        cdr = system.wait_for_cdr(call_id)
        assert (cdr["outcome"], cdr["agent_id"], cdr["ended_by"]) == ("answered", f"mr-quick-{path}", "caller"), cdr
        assert [r["call_id"] for r in system.api.get("/v1/cdrs", params={"limit": 100, "kind": "final"}).json()[
            "items"]].count(call_id) == 1
        # and one row for the late agent's attempt that did not connect (issue 12)
        wait_for(lambda: len(system.api.get("/v1/cdrs", params={"call_id": call_id, "kind": "attempt"}).json()[
            "items"]) == 1, 5, "the attempt row", system)
        rows = system.api.get("/v1/cdrs", params={"call_id": call_id, "kind": "attempt"}).json()["items"]
        assert [(r["agent_id"], r["reason"], r["attempt"]) for r in rows] == [
            (f"mr-late-{path}", "answered_elsewhere", 1)]
        # the late agent was rung and is free again at once (a ring-all miss costs no wrap-up), never in the call
        wait_for(lambda: system.agent_state(f"mr-late-{path}") == "free", 3, "the late agent free", system)
        assert agent_transitions(system, f"mr-late-{path}") == [("logged_out", "free"), ("free", "ringing"),
                                                                ("ringing", "free")]
        logout(system, f"mr-quick-{path}", f"mr-late-{path}")


# ---------------------------------------------------------------------------- 3. out of dialog
def test_options_probe_gets_200_with_allow_and_leaves_no_trace(system: WholeSystem, peers: list[Sipp]) -> None:
    events_before = len(system.events())
    probe = start(peers, Sipp(sip("options_probe.xml"), remote=system.caller_target, calls=5, rate=10))
    ok(probe, system)   # 5 probes, each answered 200 with Allow: ... INVITE ...
    assert reports_from(system, probe.port) == []
    assert len(system.events()) == events_before  # no call, no event, no CDR


def test_max_forwards_0_gets_483_and_no_call_although_an_agent_is_free(
        system: WholeSystem, peers: list[Sipp]) -> None:
    f = "m-hops"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(scenario("agent.xml")))
    flow(system, f, queue)
    agent(system, "mf-1", f, phone)
    system.login("mf-1")  # a call to this flow would ring this phone at once
    looping = start(peers, caller(system, "caller_max_forwards_0_expect_483.xml", f))
    ok(looping, system)
    assert "SIP/2.0 483 Too Many Hops" in looping.scenario_log(), looping.scenario_log()
    assert reports_from(system, looping.port) == []
    assert system.call_ids_of_flow(f) == []
    assert system.agent_state("mf-1") == "free" and "INVITE" not in phone.scenario_log()

    # the same call with hops left is a call: it rings that phone
    c = start(peers, caller(system, "caller.xml", f, pause_ms=300))
    ok(c, system)
    ok(phone, system)
    call_id = only_call(system, f)
    assert [r["flow"] for r in reports_from(system, c.port)] == [f]  # (so the empty lists above say something)
    assert system.wait_for_cdr(call_id)["agent_id"] == "mf-1"
    logout(system, "mf-1")


# ---------------------------------------------------------------------------- 4. behind a proxy
def test_caller_behind_a_proxy_every_request_of_the_edge_follows_the_record_route(
        system: WholeSystem, peers: list[Sipp]) -> None:
    """SIPp plays the record-routing proxy and the caller behind it; the caller's own address (its
    Contact) is a socket of the test that must never receive anything. The real routing makes the
    edge send three in-dialog requests: re-INVITE to the queue media, re-INVITE to the agent, and
    the BYE when the agent hangs up."""
    f = "m-proxy"
    welcome = start(peers, Sipp(scenario("media_welcome.xml"), extra=["-d", "200"]))
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    phone = start(peers, Sipp(scenario("agent_hangs_up.xml"), extra=["-d", "500"]))
    flow(system, f, queue, welcome_uri=f"sip:welcome@{welcome.uri_host}")
    agent(system, "mp-1", f, phone)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ua:
        ua.bind(("127.0.0.1", 0))
        ua_port = ua.getsockname()[1]
        proxy = caller(system, "caller_behind_proxy.xml", f)
        proxy.extra += ["-key", "ua_port", str(ua_port)]
        start(peers, proxy, trace_msg=True)
        call_id = only_call(system, f)
        wait_for(lambda: "call.queued" in types(system, call_id), 10, "the call queued", system)
        system.login("mp-1")
        proxy_rc = proxy.wait()
        ua.setblocking(False)
        stray = []
        while True:
            try:
                stray.append(ua.recv(65535).decode(errors="replace"))
            except BlockingIOError:
                break
        assert stray == [], f"the edge sent to the caller's own address, not to the proxy: {stray}"
        assert proxy_rc == 0, f"{proxy.errors()}\n{system.logs()}"  # answered both re-INVITEs, got the BYE
        ok(phone, system)
        ok(welcome, system)
        ok(queue, system)

    proxy_uri = f"sip:127.0.0.1:{proxy.port};lr"
    caller_contact = f"sip:alice@127.0.0.1:{ua_port}"
    got = received(proxy)
    responses = [m for m in got if m.startswith("SIP/2.0 ") and "CSeq: 1 INVITE" in m]
    assert responses and all(len(header(m, "via")) == 2 and f":{ua_port};" in header(m, "via")[1]
                             and f":{proxy.port};" in header(m, "via")[0] for m in responses), responses
    final = [m for m in responses if m.startswith("SIP/2.0 200")]
    assert final and all(header(m, "record-route") == [f"<{proxy_uri}>"] for m in final), final
    requests = [m for m in got if not m.startswith("SIP/2.0 ")]
    assert [r.split(" ", 1)[0] for r in requests] == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], \
        [r.splitlines()[0] for r in requests]
    for r in requests:  # loose routing (RFC 3261 12.2.1.1): the caller's Contact as target, the proxy as Route
        assert r.splitlines()[0] == f"{r.split(' ', 1)[0]} {caller_contact} SIP/2.0", r
        assert header(r, "route") == [f"<{proxy_uri}>"], r

    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"], cdr["ended_by"]) == ("answered", "mp-1", "agent"), cdr
    assert types(system, call_id) == ["call.arrived", "call.welcome_ended", "call.queued", "call.offered",
                                      "call.connected", "call.ended"]
    logout(system, "mp-1")


def test_nothing_pending_or_dead(system: WholeSystem) -> None:
    """After every path: each report and event handled and acknowledged, nothing dead, no live call."""
    nothing_pending_or_dead(system)
