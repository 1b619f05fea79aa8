"""The api's routing features against a real redis-server and a temporary SQLite file, through its
ASGI app: flow routing fields and agent max_no_answer (SQL, cache, re-seed), pause / unpause /
release, external dispatching, /v1/config, /v1/stats, /v1/service-level.

Calls are driven through the Lua steps the way the dispatcher applies a sip-edge's reports
(`Store.apply_report`), on the app's own Store, whose clock the test controls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from api_client import running
from problems import problem
from pydantic import ValidationError

from callcenter.contract.codec import decode, encode
from callcenter.db.models import Flow
from callcenter.settings import ApiSettings
from callcenter.store import RC, Result, now_ms
from callcenter.store.config import CALL_HANDLING, PARAMS
from callcenter.store.reads import service_level_pct
from callcenter_api.deps import Services
from callcenter_api.schemas import ConfigOut, ConfigPatch

TENANT = "routing"
EDGE = "edge-1"
FLOW = {"skill": "sales", "queue_uri": "sip:queue@127.0.0.1:5090"}
ROUTING = {"strategy": "round-robin", "max_wait_s": 120, "overflow_flow": "backup", "overflow_uri": "sip:vm@127.0.0.1",
           "dissuading_uri": "sip:sorry@127.0.0.1:5091", "dissuading_hangup": True, "dissuading_qsize_th": 5,
           "dissuading_ewt_th": 300, "dissuading_onhold_th": 600, "sl_threshold_s": 15,
           "max_call_duration_s": 3600}
ROUTING_DEFAULTS = {"strategy": "longest-idle", "max_wait_s": 0, "overflow_flow": None, "overflow_uri": None,
                    "dissuading_uri": None, "dissuading_hangup": False, "dissuading_qsize_th": 0,
                    "dissuading_ewt_th": 0, "dissuading_onhold_th": 0, "sl_threshold_s": 0,
                    "max_call_duration_s": 0}


class Clock:
    """The app Store's clock: tests move it by hand."""

    def __init__(self) -> None:
        # a real time, so service-level buckets have realistic names; 5 s into a minute
        self.now = (now_ms() // 60_000) * 60_000 + 5_000

    def __call__(self) -> int:
        return self.now


class Driver:
    """Applies sip-edge reports with the dispatcher's Lua steps, and reads streams back."""

    def __init__(self, api: httpx.AsyncClient, services: Services, clock: Clock) -> None:
        self.api, self.services, self.store, self.clock = api, services, services.store, clock
        self.redis: aioredis.Redis = services.redis
        self.seq: dict[str, int] = {}

    async def report(self, rtype: str, call_id: str, **data: Any) -> Result:
        self.seq[call_id] = self.seq.get(call_id, 0) + 1
        fields = encode(rtype, {"call_id": call_id, "edge": EDGE, "seq": self.seq[call_id], "ts": self.clock.now,
                                **data})
        payload = fields["data"]
        assert isinstance(payload, bytes)
        res = await self.store.apply_report(rtype, f"{self.clock.now}-0", payload)
        assert res.rc is RC.OK, (rtype, call_id, res)
        return res

    async def arrive(self, call_id: str, flow: str = "sales-line") -> str:
        res = await self.report("report.call_arrived", call_id, flow=flow, caller="bob", caller_uri="sip:bob@x",
                                sip_call_id=call_id + "@x", source="127.0.0.1:5060")
        call = await self.store.call(call_id)
        if res.detail == "queued" and call is not None and call.get("media") == "queue":
            # the edge reports the queue media's answer once the caller ACKed; only then is a
            # caller offered to an agent (offer.lua waits_for_media)
            res = await self.report("report.media_answered", call_id, purpose="queue", uri="sip:queue@x")
        return res.detail

    async def offer_of(self, call_id: str) -> tuple[str, str]:
        call = await self.store.call(call_id)
        assert call is not None and call["state"] == "offered", call
        return call["agent"], call["offer"]

    async def answer(self, call_id: str) -> None:
        agent_id, offer_id = await self.offer_of(call_id)
        await self.report("report.agent_answered", call_id, offer_id=offer_id, agent_id=agent_id)

    async def fail(self, call_id: str, reason: str = "busy") -> None:
        agent_id, offer_id = await self.offer_of(call_id)
        await self.report("report.agent_failed", call_id, offer_id=offer_id, agent_id=agent_id, reason=reason)

    async def hang_up(self, call_id: str, by: str = "caller") -> str:
        return (await self.report("report.call_ended", call_id, by=by, reason="bye")).detail

    async def commands(self, ctype: str) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(self.store.keys.commands(EDGE))
        return [e.data for e in (decode(f, i) for i, f in entries) if e.type == ctype]

    async def events(self, etype: str) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(self.store.keys.events)
        return [e.data for e in (decode(f, i) for i, f in entries) if e.type == etype]

    async def agent(self, agent_id: str) -> dict[str, Any]:
        r = await self.api.get(f"/v1/agents/{agent_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def provision(self, agents: tuple[str, ...] = ("alice",), login: bool = True, wrapup_s: int | None = None,
                        **flow: Any) -> None:
        r = await self.api.put("/v1/flows/sales-line", json={**FLOW, **flow})
        assert r.status_code in (200, 201), r.text
        for agent_id in agents:
            r = await self.api.put(f"/v1/agents/{agent_id}", json={"uri": f"sip:{agent_id}@127.0.0.1:5070",
                                                                    "skills": ["sales"], "wrapup_s": wrapup_s})
            assert r.status_code in (200, 201), r.text
            if login:
                assert (await self.api.post(f"/v1/agents/{agent_id}/login")).status_code == 200
                self.clock.now += 10  # the first logged in is the longest idle


@pytest.fixture
async def d(redis: aioredis.Redis, settings: ApiSettings) -> AsyncIterator[Driver]:
    async with running(settings) as (client, app):
        services: Services = app.state.services
        clock = Clock()
        services.store.clock = clock
        yield Driver(client, services, clock)


def hash_of(raw: dict[Any, Any]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


# -- provisioning of the routing fields -------------------------------------------------------------

async def test_flow_routing_fields_in_sql_cache_reseed_and_reload(d: Driver, settings: ApiSettings) -> None:
    r = await d.api.put("/v1/flows/sales-line", json={**FLOW, **ROUTING})
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in ROUTING} == ROUTING
    assert {k: (await d.api.get("/v1/flows/sales-line")).json()[k] for k in ROUTING} == ROUTING
    row = await d.services.sql(lambda s: s.get(Flow, "sales-line"))
    assert row is not None and row.dissuading_hangup is True and row.overflow_flow == "backup"

    key = d.store.keys.flow("sales-line")
    expected_cache = {"strategy": "round-robin", "max_wait_s": "120", "overflow_flow": "backup",
                      "overflow_uri": "sip:vm@127.0.0.1", "dissuading_hangup": "1", "dissuading_qsize_th": "5",
                      "dissuading_ewt_th": "300", "dissuading_onhold_th": "600", "sl_threshold_s": "15",
                      "max_call_duration_s": "3600"}
    cache = hash_of(await d.redis.hgetall(key))
    assert {k: cache[k] for k in expected_cache} == expected_cache

    # a replace without them puts the defaults back, in SQL and in the cache
    r = await d.api.put("/v1/flows/sales-line", json=FLOW)
    assert r.status_code == 200 and {k: r.json()[k] for k in ROUTING} == ROUTING_DEFAULTS
    cache = hash_of(await d.redis.hgetall(key))
    assert (cache["strategy"], cache["overflow_flow"], cache["dissuading_hangup"], cache["max_wait_s"]) == \
        ("longest-idle", "", "0", "0")

    # /v1/reload and the start-up re-seed carry the fields into a cache that lost them
    await d.api.put("/v1/flows/sales-line", json={**FLOW, **ROUTING})
    await d.api.put("/v1/agents/alice", json={"uri": "sip:alice@127.0.0.1", "skills": ["sales"], "max_no_answer": 3})
    await d.redis.delete(key, d.store.keys.agent("alice"))
    assert (await d.api.post("/v1/reload")).status_code == 200
    cache = hash_of(await d.redis.hgetall(key))
    assert {k: cache[k] for k in expected_cache} == expected_cache
    assert hash_of(await d.redis.hgetall(d.store.keys.agent("alice")))["max_no_answer"] == "3"
    await d.redis.flushall()
    async with running(settings):
        cache = hash_of(await d.redis.hgetall(key))
        assert {k: cache[k] for k in expected_cache} == expected_cache
        assert hash_of(await d.redis.hgetall(d.store.keys.agent("alice")))["max_no_answer"] == "3"


@pytest.mark.parametrize(("change", "message"), [
    ({"strategy": "ring-everyone"}, "Input should be 'longest-idle'"),
    ({"overflow_flow": "sales-line", "overflow_uri": "sip:vm@h"}, "overflow_flow cannot be the flow itself"),
    ({"overflow_flow": "bad id", "max_wait_s": 10}, "String should match pattern"),
    ({"overflow_uri": "http://vm.example.com", "max_wait_s": 10}, "must be a SIP URI"),
    ({"max_wait_s": -1}, "greater than or equal to 0"),
    ({"dissuading_qsize_th": -5, "dissuading_uri": "sip:d@h"}, "greater than or equal to 0"),
    ({"sl_threshold_s": -1}, "greater than or equal to 0"),
    ({"max_call_duration_s": -1}, "greater than or equal to 0"),
    ({"max_call_duration_s": 86_401}, "less than or equal to 86400"),
    ({"dissuading_qsize_th": 3, "dissuading_onhold_th": 60},
     "dissuading_qsize_th, dissuading_onhold_th need dissuading_uri"),
    ({"max_wait_s": 60}, "max_wait_s needs overflow_flow or overflow_uri"),
    ({"dissuading_hangup": "maybe"}, "valid boolean"),
])
async def test_flow_routing_validation(d: Driver, change: dict[str, Any], message: str) -> None:
    r = await d.api.put("/v1/flows/sales-line", json={**FLOW, **change})
    assert message in str(problem(r, 422, "validation-failed")["errors"]), r.json()
    assert (await d.api.get("/v1/flows/sales-line")).status_code == 404


async def test_overflow_to_another_flow_and_agent_max_no_answer(d: Driver) -> None:
    r = await d.api.put("/v1/flows/sales-line", json={**FLOW, "max_wait_s": 30, "overflow_flow": "backup"})
    assert r.status_code == 201, r.text
    # an agent's missed offers: max_no_answer from the API reaches the Lua (1 miss = paused)
    r = await d.api.put("/v1/agents/alice", json={"uri": "sip:alice@h", "skills": ["sales"], "wrapup_s": 0,
                                                  "max_no_answer": 1})
    assert r.status_code == 201 and r.json()["max_no_answer"] == 1
    await d.api.post("/v1/agents/alice/login")
    assert await d.arrive("c1") == "offered"
    await d.fail("c1", "no_answer")
    live = (await d.agent("alice"))["live"]
    assert (live["state"], live["pause_reason"]) == ("paused", "no-answer")
    r = await d.api.put("/v1/agents/alice", json={"uri": "sip:alice@h", "skills": ["sales"], "max_no_answer": 1001})
    assert r.status_code == 422
    r = await d.api.put("/v1/agents/alice", json={"uri": "sip:alice@h", "skills": ["sales"]})
    assert r.json()["max_no_answer"] is None
    assert hash_of(await d.redis.hgetall(d.store.keys.agent("alice")))["max_no_answer"] == ""


# -- pause, unpause, release --------------------------------------------------------------------------

async def test_pause_and_unpause(d: Driver) -> None:
    await d.provision()
    r = await d.api.post("/v1/agents/alice/pause", json={"reason": "lunch"})
    assert r.status_code == 200, r.text
    assert r.json() == {"agent_id": "alice", "state": "paused", "reason": "lunch", "already": False}
    agent = await d.agent("alice")
    assert agent["state"] == "paused"
    assert (agent["live"]["pause_reason"], agent["live"]["pause_pending"]) == ("lunch", None)
    assert await d.events("agent.paused") == [{"ts": d.clock.now, "agent_id": "alice", "reason": "lunch"}]
    r = await d.api.post("/v1/agents/alice/pause", json={"reason": "lunch"})
    assert r.json()["already"] is True and r.json()["state"] == "paused"

    r = await d.api.post("/v1/agents/alice/unpause")
    assert r.json() == {"agent_id": "alice", "state": "free", "already": False}
    assert len(await d.events("agent.unpaused")) == 1
    assert (await d.agent("alice"))["live"]["pause_reason"] is None
    r = await d.api.post("/v1/agents/alice/unpause")
    assert r.json() == {"agent_id": "alice", "state": "free", "already": True}


async def test_pause_errors(d: Driver) -> None:
    await d.provision(login=False)
    r = await d.api.post("/v1/agents/alice/pause", json={"reason": "lunch"})
    assert problem(r, 409, "invalid-state")["detail"] == "agent 'alice' cannot be paused: agent is not logged in"
    r = await d.api.post("/v1/agents/ghost/pause", json={"reason": "lunch"})
    assert problem(r, 404, "not-found")["detail"] == "agent 'ghost' does not exist"
    assert (await d.api.post("/v1/agents/ghost/unpause")).status_code == 404
    assert (await d.api.post("/v1/agents/ghost/release")).status_code == 404
    for body in ({}, {"reason": ""}, {"reason": "a b"}, {"reason": "x" * 65}, {"reason": "ok", "until": 5}):
        assert (await d.api.post("/v1/agents/alice/pause", json=body)).status_code == 422, body


async def test_pause_during_a_ringing_offer_is_pending(d: Driver) -> None:
    await d.provision()
    assert await d.arrive("c1") == "offered"
    r = await d.api.post("/v1/agents/alice/pause", json={"reason": "break"})
    assert r.json() == {"agent_id": "alice", "state": "pending", "reason": "break", "already": False}
    agent = await d.agent("alice")
    assert (agent["state"], agent["live"]["pause_pending"], agent["live"]["pause_reason"]) == \
        ("ringing", "break", None)
    assert await d.events("agent.paused") == []
    # the offer fails: the pause starts (no wrap-up), the call waits
    await d.fail("c1", "no_answer")
    agent = await d.agent("alice")
    assert (agent["state"], agent["live"]["pause_reason"], agent["live"]["pause_pending"]) == \
        ("paused", "break", None)
    assert [e["reason"] for e in await d.events("agent.paused")] == ["break"]
    assert (await d.store.call("c1") or {})["state"] == "queued"


async def test_unpause_hands_a_waiting_call_at_once(d: Driver) -> None:
    await d.provision()
    await d.api.post("/v1/agents/alice/pause", json={"reason": "lunch"})
    assert await d.arrive("c1") == "queued"  # paused agents count as logged in: not rejected
    r = await d.api.post("/v1/agents/alice/unpause")
    assert r.json() == {"agent_id": "alice", "state": "ringing", "already": False}
    rings = await d.commands("command.ring")
    assert [(c["call_id"], c["agent_id"]) for c in rings] == [("c1", "alice")]


async def test_force_release_of_an_agent_in_a_call_hangs_it_up(d: Driver) -> None:
    await d.provision(agents=("alice", "bob"))
    assert await d.arrive("c1") == "offered"
    await d.answer("c1")
    assert (await d.agent("alice"))["state"] == "in_call"
    d.clock.now += 5_000
    r = await d.api.post("/v1/agents/alice/release")
    assert r.status_code == 200, r.text
    assert r.json() == {"agent_id": "alice", "state": "free", "already": False}  # no wrap-up
    assert await d.commands("command.hangup") == [{"call_id": "c1", "reason": "force_release"}]
    released = await d.events("agent.released")
    assert released == [{"ts": d.clock.now, "agent_id": "alice", "reason": "forced", "from": "in_call",
                         "call_id": "c1"}]
    ended = await d.events("call.ended")
    assert [(e["outcome"], e["ended_by"], e["reason"], e["talk_ms"]) for e in ended] == \
        [("failed", "system", "force_release", 5_000)]
    # nothing to release: the answer says so
    r = await d.api.post("/v1/agents/bob/release")
    assert r.json() == {"agent_id": "bob", "state": "free", "already": True}


# -- external dispatching and /v1/config --------------------------------------------------------------

async def test_internal_dispatching_off_then_dispatch_by_api(d: Driver) -> None:
    await d.provision(agents=("alice", "bob"))
    await d.api.put("/v1/agents/carol", json={"uri": "sip:carol@h", "skills": ["support"]})
    await d.api.post("/v1/agents/carol/login")
    r = await d.api.patch("/v1/config", json={"internal_dispatching": False})
    assert r.status_code == 200 and r.json()["internal_dispatching"] is False
    assert await d.redis.hget(d.store.keys.config, "internal_dispatching") == b"0"

    assert await d.arrive("c1") == "queued"  # alice and bob are free, yet the call waits
    assert (await d.agent("alice"))["state"] == "free"
    r = await d.api.post("/v1/calls/c1/dispatch", json={"agent_id": "bob"})
    assert r.status_code == 200, r.text
    assert r.json() == {"call_id": "c1", "agent_id": "bob", "state": "offered", "offer_id": "1"}
    rings = await d.commands("command.ring")
    assert [(c["call_id"], c["agent_id"], c["offer_id"]) for c in rings] == [("c1", "bob", "1")]

    assert await d.arrive("c2") == "queued"
    cases = [
        ("c1", "alice", 409, "call 'c1' cannot be dispatched to agent 'alice': the call is offered, not queued"),
        ("c2", "bob", 409, "call 'c2' cannot be dispatched to agent 'bob': the agent is ringing, not free"),
        ("c2", "carol", 409, "call 'c2' cannot be dispatched to agent 'carol': the agent lacks skill sales"),
        ("nope", "alice", 404, "call 'nope' does not exist (or has ended)"),
        ("c2", "ghost", 404, "agent 'ghost' does not exist"),
    ]
    for call_id, agent_id, code, detail in cases:
        cause = "not-found" if code == 404 else "invalid-state"
        r = await d.api.post(f"/v1/calls/{call_id}/dispatch", json={"agent_id": agent_id})
        assert problem(r, code, cause)["detail"] == detail
    assert (await d.api.post("/v1/calls/c2/dispatch", json={"agent": "alice"})).status_code == 422
    assert (await d.api.post("/v1/calls/c2/dispatch", json={"agent_id": "a,b"})).status_code == 422

    # back on: the next free agent takes waiting calls by itself again
    r = await d.api.patch("/v1/config", json={"internal_dispatching": True})
    assert r.json()["internal_dispatching"] is True
    assert await d.arrive("c3") == "offered"


async def test_config_get_and_patch(d: Driver) -> None:
    r = await d.api.get("/v1/config")
    assert r.status_code == 200
    expected = {p.name: p.default for p in CALL_HANDLING}
    assert r.json() == expected

    r = await d.api.patch("/v1/config", json={"ring_timeout_s": 30, "reject_on_no_agents": False,
                                               "queue_pos_param": "pos", "max_no_answer": 3})
    assert r.status_code == 200, r.text
    assert r.json() == {**expected, "ring_timeout_s": 30, "reject_on_no_agents": False, "queue_pos_param": "pos",
                        "max_no_answer": 3}
    raw = hash_of(await d.redis.hgetall(d.store.keys.config))
    assert (raw["ring_timeout_s"], raw["reject_on_no_agents"], raw["queue_pos_param"]) == ("30", "0", "pos")
    # the Lua reads it: with no agent logged in, a call now waits instead of being rejected
    await d.provision(login=False)
    assert await d.arrive("c1") == "queued"
    assert (await d.commands("command.media"))[0]["uri"].startswith("sip:queue@127.0.0.1:5090;pos=0")

    # null = back to the default; the others are kept
    r = await d.api.patch("/v1/config", json={"ring_timeout_s": None})
    assert r.json()["ring_timeout_s"] == 20 and r.json()["max_no_answer"] == 3
    assert await d.redis.hexists(d.store.keys.config, "ring_timeout_s") == 0
    # a value the Lua cannot use reads as the default the Lua falls back to
    await d.redis.hset(d.store.keys.config, "wrapup_s", "soon")
    assert (await d.api.get("/v1/config")).json()["wrapup_s"] == 30

    for body in ({"ring_timeout_s": 0}, {"no_agents_code": 200}, {"wrapup_s": -1}, {"queue_pos_param": ""},
                 {"queue_pos_param": "a;b"}, {"internal_dispatching": "sometimes"}, {"unknown": 1},
                 {"events_maxlen": 10}):
        r = await d.api.patch("/v1/config", json=body)
        assert r.status_code == 422, body


def test_config_schemas_are_the_registrys() -> None:
    """ConfigOut and ConfigPatch are built from the registry: every parameter, typed, with its doc and range."""
    assert set(PARAMS) == set(ConfigOut.model_fields) == set(ConfigPatch.model_fields)
    assert PARAMS["internal_dispatching"].default is True and PARAMS["queue_pos_param"].default == "cc_pos"
    for p in CALL_HANDLING:
        assert ConfigOut.model_fields[p.name].description == p.doc
        assert ConfigPatch.model_fields[p.name].default is None
    with pytest.raises(ValidationError):
        ConfigPatch(ring_timeout_s=PARAMS["ring_timeout_s"].le + 1)
    with pytest.raises(ValidationError):
        ConfigPatch(chat_dispatch_policy="nope")


# -- statistics -----------------------------------------------------------------------------------------

async def test_stats_after_a_few_calls(d: Driver) -> None:
    await d.provision(agents=("alice", "bob"))
    t0 = d.clock.now
    assert await d.arrive("c1") == "offered"  # alice, the longest idle
    d.clock.now = t0 + 1_000
    assert await d.arrive("c2") == "offered"  # bob
    d.clock.now = t0 + 2_000
    await d.answer("c1")  # wait 2 s
    d.clock.now = t0 + 3_000
    await d.fail("c2", "busy")  # bob goes to wrap-up (the penalty); c2 waits
    d.clock.now = t0 + 5_000
    assert await d.hang_up("c2") == "abandoned"  # waited 4 s
    d.clock.now = t0 + 6_000
    assert await d.arrive("c3") == "queued"  # nobody free
    d.clock.now = t0 + 12_000
    assert await d.hang_up("c1") == "answered"  # talked 10 s; alice goes to wrap-up

    r = await d.api.get("/v1/stats")
    assert r.status_code == 200, r.text
    body = r.json()
    counters = {"incalls": 3, "distributed": 2, "answered": 1, "answered_chats": 0, "abandoned": 1,
                "overflowed": 0, "overflowed_in": 0, "onhold": 1, "onhold_chats": 0, "queued": 1, "free_agents": 0,
                "logged_agents": 2,
                "awt_ms": (2_000 + 4_000) // 2, "att_ms": 10_000, "talk_n": 1,
                "load": 100 * (1 + 2 - 0) // 2}
    assert body["global"] == {**counters, "reset_ms": None}
    assert body["flows"] == [{**counters, "flow_id": "sales-line", "skill": "sales",
                              "etw_ms": 10_000 * 1 // 2, "aht_ema_ms": 10_000}]
    assert body["agents"] == [
        {"agent_id": "alice", "state": "wrap_up", "distributed": 1, "answered": 1, "answered_chats": 0, "missed": 0,
         "talk_ms": 10_000, "att_ms": 10_000},
        {"agent_id": "bob", "state": "wrap_up", "distributed": 1, "answered": 0, "answered_chats": 0, "missed": 1,
         "talk_ms": 0, "att_ms": 0},
    ]

    # a free agent lowers the load; an agent without the flow's skill counts only in the total
    await d.api.put("/v1/agents/carol", json={"uri": "sip:carol@h", "skills": ["support"]})
    await d.api.post("/v1/agents/carol/login")
    body = (await d.api.get("/v1/stats")).json()
    assert (body["global"]["free_agents"], body["global"]["logged_agents"], body["global"]["load"]) == \
        (1, 3, 100 * (1 + 3 - 1) // 3)
    assert (body["flows"][0]["free_agents"], body["flows"][0]["logged_agents"]) == (0, 2)

    d.clock.now = t0 + 20_000
    r = await d.api.post("/v1/stats/reset")
    assert r.json() == {"reset_ms": t0 + 20_000}
    body = (await d.api.get("/v1/stats")).json()
    kept = {"onhold": 1, "queued": 1, "free_agents": 1, "logged_agents": 3, "load": 100 * (1 + 3 - 1) // 3}
    zero = {k: 0 for k in counters if k not in kept}
    assert body["global"] == {**zero, **kept, "reset_ms": t0 + 20_000}
    assert body["flows"][0]["aht_ema_ms"] == 10_000  # the estimated wait keeps its basis
    assert body["flows"][0]["etw_ms"] == 0  # no talk-time sample since the reset
    assert all(a["distributed"] == a["answered"] == a["missed"] == a["talk_ms"] == 0 for a in body["agents"])


async def test_stats_with_nobody_logged_in_are_zero_not_errors(d: Driver) -> None:
    await d.provision(login=False)
    body = (await d.api.get("/v1/stats")).json()
    assert body["global"]["load"] == 0 and body["flows"][0]["etw_ms"] == 0 and body["flows"][0]["load"] == 0
    assert body["flows"][0]["aht_ema_ms"] is None and body["agents"][0]["state"] == "logged_out"


# -- service level ------------------------------------------------------------------------------------

async def test_service_level_windows(d: Driver) -> None:
    await d.provision(wrapup_s=0, sl_threshold_s=10)
    await d.api.put("/v1/flows/other", json={"skill": "other", "queue_uri": "sip:q@h"})
    t = d.clock.now  # 5 s into the current minute
    # five minutes ago: one call answered within T
    d.clock.now = t - 300_000
    await d.arrive("c0")
    d.clock.now += 1_000
    await d.answer("c0")
    d.clock.now += 10_000
    await d.hang_up("c0")
    # this minute (every fact before t + 55 s)
    d.clock.now = t
    assert await d.arrive("c1") == "offered"
    d.clock.now = t + 1_000
    assert await d.arrive("c2") == "queued"
    d.clock.now = t + 3_000
    await d.answer("c1")  # within T (3 s)
    d.clock.now = t + 4_000
    assert await d.hang_up("c2") == "abandoned"  # within T (3 s)
    d.clock.now = t + 5_000
    assert await d.arrive("c3") == "queued"
    d.clock.now = t + 6_000
    await d.hang_up("c1", by="agent")  # alice is free at once (no wrap-up) and rings for c3
    d.clock.now = t + 20_000
    await d.answer("c3")  # after T (15 s)
    d.clock.now = t + 21_000
    assert await d.arrive("c4") == "queued"
    d.clock.now = t + 40_000
    assert await d.hang_up("c4") == "abandoned"  # after T (19 s)
    d.clock.now = t + 41_000

    r = await d.api.get("/v1/service-level")
    assert r.status_code == 200, r.text
    by_flow = {f["flow_id"]: f for f in r.json()}
    assert sorted(by_flow) == ["other", "sales-line"]
    sales = by_flow["sales-line"]
    assert sales["threshold_s"] == 10
    now_window = {"offered": 4, "answered": 2, "answered_in_t": 1, "abandoned": 2, "abandoned_in_t": 1,
                  "service_level_pct": round(100 * 1 / (4 - 1), 2)}
    wider = {"offered": 5, "answered": 3, "answered_in_t": 2, "abandoned": 2, "abandoned_in_t": 1,
             "service_level_pct": 50.0}
    assert sales["windows"] == [{"minutes": 1, **now_window}, {"minutes": 15, **wider}, {"minutes": 60, **wider}]
    other = by_flow["other"]
    assert other["threshold_s"] == 20  # the global default
    assert [w["service_level_pct"] for w in other["windows"]] == [None, None, None]

    # a flow without its own T follows the global one
    await d.api.patch("/v1/config", json={"sl_threshold_s": 45})
    r = await d.api.get("/v1/service-level", params={"flow_id": "other"})
    assert [f["threshold_s"] for f in r.json()] == [45]
    r = await d.api.get("/v1/service-level", params={"flow_id": "nope"})
    assert problem(r, 404, "not-found")["detail"] == "flow 'nope' does not exist"
    assert (await d.api.get("/v1/service-level", params={"flow_id": "a:b"})).status_code == 422

    # an hour later, the buckets are out of every window
    d.clock.now = t + 3_600_000
    r = await d.api.get("/v1/service-level", params={"flow_id": "sales-line"})
    assert [w["offered"] for w in r.json()[0]["windows"]] == [0, 0, 0]


def test_service_level_formula() -> None:
    assert service_level_pct(answered_in_t=8, offered=10, abandoned_in_t=2) == 100.0
    assert service_level_pct(answered_in_t=6, offered=10, abandoned_in_t=2) == 75.0
    assert service_level_pct(answered_in_t=0, offered=2, abandoned_in_t=2) is None
    assert service_level_pct(answered_in_t=3, offered=2, abandoned_in_t=0) == 100.0  # facts across a window edge
