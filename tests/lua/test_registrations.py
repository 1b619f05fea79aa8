"""sip_register.lua, registration_lapse.lua and agent_login.lua's registration check, on a real
redis-server: bindings with expiry, several contacts, removal, limits, replays, and the pause of an
agent whose registration lapses or is removed while it is logged in."""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from lua_harness import T0, Harness

from callcenter.contract.codec import decode
from callcenter.store import RC

AGENT = "a1"


def binding(uri: str, call_id: str = "reg-1", cseq: int = 1) -> str:
    return json.dumps({"uri": uri, "received": "127.0.0.1:5070", "transport": "udp", "call_id": call_id,
                       "cseq": cseq})


async def provisioned(h: Harness, *, required: bool = False, login: bool = False) -> None:
    await h.agent(AGENT, ["sales"], login=False)
    await h.redis.hset(h.store.keys.sip_auth(AGENT), mapping={
        "realm": "callcenter", "ha1_md5": "x", "ha1_sha256": "y", "registration_required": "1" if required else "0"})
    if login:
        assert (await h.store.agent_login(AGENT, now=h.now)).rc is RC.OK


async def register(h: Harness, contacts: list[tuple[str, int, str]], *, cseq: int = 1, call_id: str = "reg-1",
                   remove_all: bool = False, max_contacts: int = 3, max_registrations: int = 100) -> tuple[RC, str]:
    res = await h.store.sip_register(AGENT, max_contacts=max_contacts, max_registrations=max_registrations,
                                     call_id=call_id, cseq=cseq, remove_all=remove_all, contacts=contacts, now=h.now)
    return res.rc, res.detail


async def paused_events(redis: aioredis.Redis, h: Harness) -> list[dict[str, object]]:
    entries = await redis.xrange(h.store.keys.events)
    events = [decode(fields, entry_id) for entry_id, fields in entries]
    return [e.data for e in events if e.type == "agent.paused"]


async def test_contacts_are_bound_with_their_expiry_and_listed(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await provisioned(h)
    rc, detail = await register(h, [("sip:a1@10.0.0.1", T0 + 60_000, binding("sip:a1@10.0.0.1")),
                                    ("urn:uuid:2", T0 + 120_000, binding("sip:a1@10.0.0.2"))])
    assert rc is RC.OK
    listed = json.loads(detail)
    assert [(json.loads(raw)["uri"], expiry) for raw, expiry in listed] == [
        ("sip:a1@10.0.0.1", T0 + 60_000), ("sip:a1@10.0.0.2", T0 + 120_000)]
    assert await redis.zscore(h.store.keys.registrations, AGENT) == T0 + 120_000
    # the AOR's keys die with their last contact even if no lapse step ever runs
    assert 119_000 < await redis.pttl(h.store.keys.aor(AGENT)) <= 120_000
    assert 119_000 < await redis.pttl(h.store.keys.aor_bindings(AGENT)) <= 120_000


async def test_expires_zero_removes_one_contact_and_star_removes_all(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await provisioned(h)
    await register(h, [("c1", T0 + 60_000, binding("sip:a1@10.0.0.1")),
                       ("c2", T0 + 60_000, binding("sip:a1@10.0.0.2"))])
    rc, detail = await register(h, [("c1", 0, binding("sip:a1@10.0.0.1", cseq=2))], cseq=2)
    assert rc is RC.OK and [json.loads(raw)["uri"] for raw, _ in json.loads(detail)] == ["sip:a1@10.0.0.2"]
    rc, detail = await register(h, [], cseq=3, remove_all=True)
    assert (rc, detail) == (RC.OK, "[]")
    assert not await redis.exists(h.store.keys.aor(AGENT), h.store.keys.aor_bindings(AGENT))
    assert await redis.zscore(h.store.keys.registrations, AGENT) is None


async def test_too_many_contacts_and_registrations_are_refused_without_a_change(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await provisioned(h)
    contacts = [(f"c{i}", T0 + 60_000, binding(f"sip:a1@10.0.0.{i}")) for i in range(4)]
    assert await register(h, contacts, max_contacts=3) == (RC.INVALID, "too_many_contacts")
    assert not await redis.exists(h.store.keys.aor(AGENT))
    await redis.zadd(h.store.keys.registrations, {"other": T0 + 60_000})
    assert await register(h, contacts[:1], max_registrations=1) == (RC.INVALID, "too_many_registrations")
    # an AOR already registered may refresh at the tenant's limit
    assert (await register(h, contacts[:1], max_registrations=2))[0] is RC.OK
    assert (await register(h, contacts[:1], cseq=2, max_registrations=1))[0] is RC.OK


async def test_a_replayed_or_reordered_register_changes_nothing(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await provisioned(h)
    await register(h, [("c1", T0 + 60_000, binding("sip:a1@10.0.0.1", cseq=5))], cseq=5)
    # an older CSeq of the same Call-ID asking for removal is ignored (RFC 3261 10.3 step 7)
    rc, detail = await register(h, [("c1", 0, binding("sip:a1@10.0.0.1", cseq=4))], cseq=4)
    assert rc is RC.OK and len(json.loads(detail)) == 1
    # another Call-ID (a rebooted phone) is taken whatever its CSeq
    rc, detail = await register(h, [("c1", 0, binding("sip:a1@10.0.0.1", call_id="reg-2"))], call_id="reg-2")
    assert (rc, detail) == (RC.OK, "[]")


async def test_unknown_agent_is_not_found(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    assert (await register(h, [("c1", T0 + 60_000, binding("sip:a1@10.0.0.1"))]))[0] is RC.NOT_FOUND


async def test_login_needs_a_live_registration_when_the_agent_says_so(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await provisioned(h, required=True)
    res = await h.store.agent_login(AGENT, now=h.now)
    assert (res.rc, res.detail) == (RC.INVALID, "not_registered")
    await register(h, [("c1", T0 + 60_000, binding("sip:a1@10.0.0.1"))])
    assert (await h.store.agent_login(AGENT, now=h.now)).rc is RC.OK


async def test_a_lapsed_registration_pauses_a_logged_in_agent_on_the_timer(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await provisioned(h, required=True)
    await register(h, [("c1", T0 + 60_000, binding("sip:a1@10.0.0.1"))])
    assert (await h.store.agent_login(AGENT, now=h.now)).rc is RC.OK
    assert await h.store.registration_lapse(now=T0 + 59_999) == 0
    assert (await h.store.agent(AGENT) or {})["state"] == "free"
    assert await h.store.registration_lapse(now=T0 + 60_000) == 1
    agent = await h.store.agent(AGENT) or {}
    assert (agent["state"], agent["pause_reason"]) == ("paused", "unregistered")
    assert await paused_events(redis, h) == [{"ts": T0 + 60_000, "agent_id": AGENT, "reason": "unregistered"}]
    assert await redis.zscore(h.store.keys.registrations, AGENT) is None
    # registering again does not unpause (docs/registering-agents.md): the agent says when it is back
    h.now = T0 + 61_000
    await register(h, [("c1", T0 + 120_000, binding("sip:a1@10.0.0.1", cseq=2))], cseq=2)
    assert (await h.store.agent(AGENT) or {})["state"] == "paused"


async def test_a_refreshed_registration_does_not_lapse(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await provisioned(h, login=True)
    await register(h, [("c1", T0 + 60_000, binding("sip:a1@10.0.0.1"))])
    await register(h, [("c1", T0 + 90_000, binding("sip:a1@10.0.0.1", cseq=2))], cseq=2)
    assert await h.store.registration_lapse(now=T0 + 60_000) == 0
    assert (await h.store.agent(AGENT) or {})["state"] == "free"
    assert await redis.zscore(h.store.keys.registrations, AGENT) == T0 + 90_000


async def test_removing_the_last_contact_pauses_at_once(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await provisioned(h, login=True)
    await register(h, [("c1", T0 + 60_000, binding("sip:a1@10.0.0.1"))])
    await register(h, [], cseq=2, remove_all=True)
    agent = await h.store.agent(AGENT) or {}
    assert (agent["state"], agent["pause_reason"]) == ("paused", "unregistered")


async def test_an_agent_in_a_call_is_paused_when_the_call_ends(redis: aioredis.Redis) -> None:
    h = Harness(redis)
    await h.flow()
    await provisioned(h, login=True)
    await register(h, [("c1", T0 + 60_000, binding("sip:a1@10.0.0.1"))])
    await h.arrive("call-1")
    assert (await h.store.agent(AGENT) or {})["state"] == "ringing"
    assert await h.store.registration_lapse(now=T0 + 60_000) == 1
    agent = await h.store.agent(AGENT) or {}
    assert (agent["state"], agent["pause_pending"]) == ("ringing", "unregistered")
