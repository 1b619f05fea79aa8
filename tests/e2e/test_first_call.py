"""The first end-to-end path, every hop real.

A private redis-server, the four services as processes (api, dispatcher, cdr-writer with SQLite,
sip-edge on a free UDP port), and SIPp playing the caller, the media server (welcome and queue) and
the agents' phones. The assertions are on what the SIPp peers saw, the CDR row, the agent's state and
the events on the stream.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from e2e_harness import nothing_pending_or_dead, started_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem

TENANT = "e2e"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from started_system(tmp_path_factory, TENANT)


def test_call_waits_in_queue_then_reaches_the_agent_logged_in_through_the_api(system: WholeSystem) -> None:
    flow = "support"
    welcome = Sipp(scenario("media_welcome.xml"), extra=["-d", "300"]).start()
    queue = Sipp(scenario("media_queue.xml")).start()
    phone = Sipp(scenario("agent.xml")).start()
    system.provision(flow, welcome, queue, {"1001": phone})

    # bad input first: garbage datagrams must not hurt the edge
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"\x00\xff garbage", b"INVITE sip:x SIP/2.0\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"):
            s.sendto(junk, ("127.0.0.1", system.sip_port))

    caller = Sipp(scenario("caller.xml"), remote=f"127.0.0.1:{system.sip_port}", service=flow,
                  extra=["-d", "1500"]).start()
    # no agent logged in: the call plays the welcome, then waits in the queue with its position
    assert wait_until(lambda: any(t == "call.queued" for t, _ in system.events()), 10), system.logs()
    [call_id] = system.call_ids_of_flow(flow)
    assert wait_until(lambda: "cc_pos=0" in queue.scenario_log(), 5), queue.scenario_log()
    assert "sdp=" in welcome.scenario_log() and "m=audio" not in queue.scenario_log()  # queue leg: late offer

    r = system.api.post("/v1/agents/1001/login")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "ringing"  # handed the waiting call in the same atomic step

    assert caller.wait() == 0, caller.errors() + system.logs()
    assert phone.wait() == 0, phone.errors()
    assert queue.wait() == 0, queue.errors()      # the queue leg was released with BYE
    assert welcome.wait() == 0, welcome.errors()  # the welcome leg ended normally

    cdr = system.wait_for_cdr(call_id)
    assert cdr["flow_id"] == flow and cdr["agent_id"] == "1001" and cdr["caller"] == "caller1"
    assert cdr["outcome"] == "answered" and cdr["ended_by"] == "caller"
    assert cdr["wait_ms"] > 0 and cdr["pickup_ms"] >= 900  # the phone rings 1 s before answering
    assert 1300 <= cdr["talk_ms"] <= 5000

    # the agent is in wrap-up (1 s), then free
    agent = system.api.get("/v1/agents/1001").json()
    assert agent["state"] in ("wrap_up", "free")
    assert wait_until(lambda: system.api.get("/v1/agents/1001").json()["state"] == "free", 5)

    types = [t for t, _ in system.events(call_id)]
    assert types == ["call.arrived", "call.welcome_ended", "call.queued", "call.offered", "call.connected",
                     "call.ended"], types
    queued = next(d for t, d in system.events(call_id) if t == "call.queued")
    assert queued["position"] == 0
    agent_states = [(d["from"], d["to"]) for t, d in system.events() if t == "agent.state_changed"
                    and d["agent_id"] == "1001"]
    assert agent_states == [("logged_out", "free"), ("free", "ringing"), ("ringing", "in_call"),
                            ("in_call", "wrap_up"), ("wrap_up", "free")]


def test_free_agent_takes_the_call_after_the_welcome_and_hangs_up_first(system: WholeSystem) -> None:
    flow = "sales"
    welcome = Sipp(scenario("media_welcome.xml"), extra=["-d", "200"]).start()
    queue = Sipp(scenario("media_queue.xml")).start()
    phone = Sipp(scenario("agent_hangs_up.xml"), extra=["-d", "1000"]).start()
    system.provision(flow, welcome, queue, {"2001": phone})
    assert system.api.post("/v1/agents/2001/login").json()["state"] == "free"

    caller = Sipp(scenario("caller_waits_for_bye.xml"), remote=f"127.0.0.1:{system.sip_port}", service=flow).start()
    assert caller.wait() == 0, caller.errors() + system.logs()
    assert phone.wait() == 0, phone.errors()
    [call_id] = system.call_ids_of_flow(flow)
    cdr = system.wait_for_cdr(call_id)
    assert cdr["outcome"] == "answered" and cdr["ended_by"] == "agent" and cdr["agent_id"] == "2001"
    assert "INVITE" not in queue.scenario_log()  # never queued: an agent was free
    queue.stop()
    types = [t for t, _ in system.events(call_id)]
    assert "call.queued" not in types and types[-1] == "call.ended"


def test_unknown_flow_is_rejected_with_404(system: WholeSystem) -> None:
    caller = Sipp(scenario("caller_expect_404.xml"), remote=f"127.0.0.1:{system.sip_port}", service="nosuchflow")
    assert caller.start().wait() == 0, caller.errors() + system.logs()
    rejected = [d for t, d in system.events() if t == "call.rejected" and d["flow"] == "nosuchflow"]
    assert rejected and rejected[0]["code"] == 404 and rejected[0]["reason"] == "unknown_flow"


def test_unknown_agent_login_is_a_clear_404(system: WholeSystem) -> None:
    r = system.api.post("/v1/agents/nobody/login")
    assert r.status_code == 404
    assert "nobody" in r.json()["detail"]


def test_services_leave_nothing_pending(system: WholeSystem) -> None:
    """After the calls, every report and event was handled and acknowledged; nothing is dead.
    (Acknowledgements ride with each consumer's next read: the check waits for them, 3 s at most.)"""
    nothing_pending_or_dead(system)
