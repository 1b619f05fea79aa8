"""No live state without a deadline: after a whole-system SIPp call mix, every Redis key the system
created has an owner that deletes it, or a TTL.

Calls: answered after an agent's no-answer, abandoned in the queue, rejected (no agents). Once
they ended, their wrap-ups ran out and the ended-call TTL (2 s here) passed, the keys are listed
with SCAN: each must belong to a family of LONG_LIVED (with the reason it may live), or carry a TTL.
A call's hash, its queue, the live-call and per-edge indexes, timers: all must be gone.
Two more edge ids that are gone for good: one SIGKILLed (declared lost after the lapse) and one
stopped (SIGTERM, its lease released): a command stream is owned only by a live edge, so theirs
(with their groups) must be gone, and their info must have a TTL or be gone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from e2e_harness import agent, caller, flow, has_event, ok, only_call, queued_call, sip, start, started_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

RING_TIMEOUT_S = 2
LAPSE_MS = 3000
ENDED_CALL_TTL_S = 2

# key family (after cc:{tenant}:) -> why it may outlive every call
LONG_LIVED: dict[str, str] = {
    r"config": "the call-handling parameters; written by the api / dispatcher seed, never expires",
    r"flows": "flow ids: provisioning, deleted by DELETE /v1/flows",
    r"flow:[^:]+": "a flow's definition: provisioning",
    r"agents": "agent ids: provisioning, deleted by DELETE /v1/agents",
    r"agent:[^:]+": "an agent's definition and runtime state: provisioning",
    r"skill:[^:]+:(flows|logged|logged:(audio|chat)|free|chat)": "skill indexes of provisioned flows and "
                                                                   "logged-in agents; emptied by logout/delete",
    r"stats": "when the counters were last reset: written by the api's stats reset",
    r"statflows": "the flows whose counters make the totals: flow upsert adds, the api's stats reset prunes",
    r"stats:flow:[^:]+": "per-flow counters and handle-time average: reset by the api's stats reset",
    r"edges": "heartbeats of live sip-edges; a lapsed edge is removed by edge_lost",
    r"events": "the product event stream, trimmed by callcenter.retention below what every group acknowledged "
               "(events_maxlen: the fuse)",
    r"commands:[^:]+": "a live sip-edge's command stream, trimmed the same way (commands_maxlen: the fuse); "
                       "deleted by edge_lost / edge_release once the edge is gone (checked below)",
    r"retention": "the retention fuse's counters: two fields per stream",
    r"reports": "the report stream, trimmed by the dispatcher up to what its group acknowledged",
    r"dead": "dead letters, trimmed to bus.DEAD_MAXLEN",
    r"sipauth:[^:]+": "an agent's SIP credentials (HA1s) and registration setting: provisioning, deleted with "
                      "the agent or by DELETE /v1/agents/<id>/sip",
    r"timer_sleep": "one number: when the dispatchers' timer loop looks again, overwritten by each pass",
    r"timer_wake": "one wake-up for the dispatchers' timer loops at most: taken by their BLPOP or emptied by "
                   "fire_timers.lua",
    r"registrations": "the registrations' lapse timer: each AOR leaves it when its last contact lapses "
                      "(registration_lapse.lua); the AOR keys themselves carry a TTL",
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    # acknowledged reports deleted at once (kept 10 min by default), by a reconciler every 0.5 s
    yield from started_system(tmp_path_factory, "deadline",
                              common_env={"CC_RING_TIMEOUT_S": str(RING_TIMEOUT_S), "CC_WRAPUP_S": "1",
                                          "CC_EDGE_LAPSE_MS": str(LAPSE_MS)},
                              edge_env={"CC_HEARTBEAT_INTERVAL_MS": "500"},
                              dispatcher_env={"CC_REPORTS_KEEP_MS": "0", "CC_RECONCILE_INTERVAL_MS": "500"})


def family_of(prefix: str, key: str) -> str | None:
    rest = key.removeprefix(prefix)
    for pattern in LONG_LIVED:
        if re.fullmatch(pattern, rest):
            return pattern
    return None


def test_every_key_has_an_owner_or_a_ttl_after_a_call_mix(system: WholeSystem, peers: list[Sipp]) -> None:
    r = system.api.patch("/v1/config", json={"ended_call_ttl_s": ENDED_CALL_TTL_S})
    assert r.status_code == 200, r.text
    call_ids: list[str] = []
    keys = system.keys

    # two edge ids gone for good: each had its command stream (made by its consumer at start)
    gone = {name: system.add_service("sip-edge", name, suffix=name) for name in ("killed", "stopped")}
    gone_ids = {name: svc.env["CC_EDGE_ID"] for name, svc in gone.items()}
    wait_for(lambda: all(system.redis.exists(keys.commands(e)) for e in gone_ids.values()), 15,
             "the extra edges' command streams", system)
    gone["killed"].kill()
    gone["stopped"].stop()

    # answered, after the first agent did not answer
    f = "k-answered"
    queue = start(peers, Sipp(scenario("media_queue.xml")))
    slow = start(peers, Sipp(sip("agent_noanswer_uas.xml")))
    phone = start(peers, Sipp(scenario("agent.xml")))
    flow(system, f, queue)
    agent(system, "ka-1", f, slow)
    agent(system, "ka-2", f, phone)
    c, call_id = queued_call(system, peers, "caller.xml", f, 500)
    system.login("ka-1")
    wait_for(lambda: has_event(system, call_id, "call.offered", agent_id="ka-1"), 5, "ka-1 rung", system)
    system.login("ka-2")
    ok(slow, system, RING_TIMEOUT_S + 10)
    ok(c, system)
    ok(phone, system)
    assert system.wait_for_cdr(call_id)["outcome"] == "answered"
    call_ids.append(call_id)

    # abandoned in the queue (welcome, then queue media, BYE a second later; nobody logged in)
    f = "k-abandoned"
    welcome = start(peers, Sipp(scenario("media_welcome.xml"), extra=["-d", "200"]))
    queue2 = start(peers, Sipp(scenario("media_queue.xml")))
    flow(system, f, queue2, welcome_uri=f"sip:welcome@{welcome.uri_host}")
    c = start(peers, caller(system, "caller_reinvited_1_bye.xml", f, pause_ms=1000))
    ok(c, system)
    call_id = only_call(system, f)
    assert system.wait_for_cdr(call_id)["outcome"] == "abandoned"
    call_ids.append(call_id)

    # rejected: nobody with the skill is logged in
    f = "k-rejected"
    flow(system, f, queue2)
    assert system.api.patch("/v1/config", json={"reject_on_no_agents": True}).status_code == 200
    try:
        c = start(peers, caller(system, "caller_expect_480.xml", f))
        ok(c, system)
    finally:
        assert system.api.patch("/v1/config", json={"reject_on_no_agents": False}).status_code == 200
    call_id = only_call(system, f)
    assert system.wait_for_cdr(call_id)["outcome"] == "rejected"
    call_ids.append(call_id)

    # the calls ended: once their wrap-ups and the ended-call TTL are over, nothing of them is left
    wait_for(lambda: all(system.agent_state(a) == "free" for a in ("ka-1", "ka-2")), 10, "wrap-ups over", system)
    wait_for(lambda: not any(system.redis.exists(keys.call(c)) for c in call_ids),
             ENDED_CALL_TTL_S + 5, "ended calls expired", system)
    # the dispatcher trims the reports it acknowledged (reconciler loop)
    wait_until(lambda: system.redis.xlen(keys.reports) <= 1, 5)

    # the SIGKILLed edge is declared lost after the lapse (the dispatcher's edge watch)
    wait_for(lambda: system.redis.zscore(keys.edges, gone_ids["killed"]) is None, LAPSE_MS / 1000 + 10,
             "the killed edge declared lost", system)
    live_edges = {e.decode() for e in system.redis.zrange(keys.edges, 0, -1)}
    assert live_edges == {system.edge_id}, live_edges

    unowned: list[str] = []
    seen: dict[str, str] = {}
    for raw in system.redis.scan_iter(match="*", count=1000):
        key = raw.decode()
        family = family_of(keys.prefix, key)
        if family is not None:
            seen[key] = family
        elif system.redis.ttl(key) < 0:
            unowned.append(key)
    assert unowned == [], f"keys with neither an owner nor a TTL: {unowned}"
    # a command stream is owned by its live edge only
    streams = {key.removeprefix(keys.prefix + "commands:") for key, family in seen.items()
               if family == r"commands:[^:]+"}
    assert streams <= live_edges, streams - live_edges
    for edge_id in gone_ids.values():
        assert system.redis.ttl(keys.edge_info(edge_id)) != -1, edge_id   # a TTL, or gone (-2)
    assert all(key.startswith(keys.prefix) for key in seen), seen
    # the families a call lives in are all gone
    for gone in (keys.calls, keys.edge_calls(system.edge_id), keys.queue("k-answered"),
                 keys.queue("k-abandoned"), keys.timers):
        assert not system.redis.exists(gone), gone
    assert system.redis.xlen(keys.reports) <= 1  # at most the last delivered one is kept
