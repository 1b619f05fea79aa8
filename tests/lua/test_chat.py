"""Chat (MSRP) calls and the flow-id message: agents' chat capacity, the balancing and full-load
policies, the chat wrap-up that holds a slot back, audio-only and chat-only agents, the flow-id
message on the ring command. Real redis-server, controlled clock."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import Harness

from callcenter.store import RC
from callcenter.store.reads import Reads


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    harness = await Harness.configured(redis, reject_on_no_agents=0, wrapup_s=0)
    await harness.flow()
    return harness


def rings(cmds: list) -> list[dict]:  # type: ignore[type-arg]
    return [d for t, d in cmds if t == "command.ring"]


async def chats_of(h: Harness, agent_id: str) -> int:
    agent = await h.store.agent(agent_id)
    assert agent is not None
    members = await h.redis.scard(h.store.keys.agent_chats(agent_id))
    assert int(agent.get("chats") or 0) == members  # the count and the set agree
    return int(members)


async def answer(h: Harness, call_id: str, agent_id: str) -> None:
    call = await h.store.call(call_id)
    assert call is not None and call["state"] == "offered" and call["agent"] == agent_id
    res = await h.report("report.agent_answered", call_id, offer_id=call["offer"], agent_id=agent_id)
    assert res.rc is RC.OK


async def test_a_chat_goes_to_the_agents_chat_uri_and_takes_one_slot(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=2)
    assert (await h.arrive("c1", media_type="chat")).detail == "offered"
    ring = rings(await h.commands())[-1]
    assert (ring["agent_id"], ring["uri"]) == ("a1", "sip:a1@127.0.0.1:7200")
    assert await h.state("a1") == "in_chat" and await chats_of(h, "a1") == 1
    assert (await h.arrive("c2", media_type="chat")).detail == "offered"  # a second slot
    assert await chats_of(h, "a1") == 2
    assert (await h.arrive("c3", media_type="chat")).detail == "queued"  # full
    changes = [(d["from"], d["to"], d.get("chats")) for _, d in await h.events("agent.state_changed")]
    assert changes == [("logged_out", "free", None), ("free", "in_chat", 1)]
    arrived = [d["media_type"] for _, d in await h.events("call.arrived")]
    assert arrived == ["chat", "chat", "chat"]

    await answer(h, "c1", "a1")
    assert await h.state("a1") == "in_chat"
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    # the freed slot takes the waiting chat at once (wrap-up 0)
    assert (await h.store.call("c3") or {})["state"] == "offered"
    assert await chats_of(h, "a1") == 2
    ended = [d for _, d in await h.events("call.ended")]
    assert [(d["call_id"], d["outcome"], d["media_type"]) for d in ended] == [("c1", "answered", "chat")]


async def test_a_chat_only_agent_never_gets_audio_and_an_audio_only_agent_never_gets_a_chat(h: Harness) -> None:
    await h.agent("chatter", ["sales"], audio=False, chat=True)
    await h.agent("talker", ["sales"])
    assert (await h.arrive("a-call")).detail == "offered"
    assert (await h.store.call("a-call") or {})["agent"] == "talker"
    assert (await h.arrive("a-chat", media_type="chat")).detail == "offered"
    assert (await h.store.call("a-chat") or {})["agent"] == "chatter"
    # the next audio call waits although the chat-only agent has free slots
    assert (await h.arrive("a-call-2")).detail == "queued"
    # the talker ends its call: it takes the waiting audio call, never a chat
    await h.report("report.agent_answered", "a-call", offer_id="1", agent_id="talker")
    await h.report("report.call_ended", "a-call", by="agent", reason="bye")
    assert (await h.store.call("a-call-2") or {})["agent"] == "talker"
    await h.report("report.agent_failed", "a-call-2", offer_id="1", agent_id="talker", reason="busy")
    for n in range(3):
        await h.arrive(f"more-chat-{n}", media_type="chat")
    offered_to = {(await h.store.call(f"more-chat-{n}") or {}).get("agent") for n in range(3)}
    assert offered_to == {"chatter"}
    assert "talker" not in {d["agent_id"] for _, d in await h.events("call.offered")
                            if d["call_id"].startswith("more-chat") or d["call_id"] == "a-chat"}
    assert (await h.store.agent("chatter") or {})["state"] == "in_chat"


async def test_an_agent_in_chats_gets_no_audio_call_and_takes_the_audio_call_first_when_free(h: Harness) -> None:
    await h.agent("both", ["sales"], chat_capacity=3)
    await h.arrive("chat-1", media_type="chat")
    assert await h.state("both") == "in_chat"
    assert (await h.arrive("call-1")).detail == "queued"  # one audio call or chats, never both
    assert (await h.arrive("chat-2", media_type="chat")).detail == "offered"
    await h.arrive("chat-3", media_type="chat")
    await h.arrive("chat-4", media_type="chat")  # the capacity is 3: it waits
    assert (await h.store.call("chat-4") or {})["state"] == "queued"
    for call_id in ("chat-1", "chat-2", "chat-3"):
        await answer(h, call_id, "both")
    await h.report("report.call_ended", "chat-1", by="caller", reason="bye")
    assert (await h.store.call("chat-4") or {})["state"] == "offered"  # the freed slot
    for call_id in ("chat-2", "chat-3"):
        await h.report("report.call_ended", call_id, by="caller", reason="bye")
    await answer(h, "chat-4", "both")
    await h.report("report.call_ended", "chat-4", by="caller", reason="bye")
    # no chat left: the agent is free and the waiting audio call comes first
    assert await h.state("both") == "ringing"
    assert (await h.store.call("call-1") or {})["agent"] == "both"


async def test_balancing_spreads_chats_full_load_fills_one_agent_first(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=4)
    await h.agent("a2", ["sales"], audio=False, chat_capacity=4)
    for n in range(3):
        await h.arrive(f"bal-{n}", media_type="chat")
    counts = {a: await chats_of(h, a) for a in ("a1", "a2")}
    assert sorted(counts.values()) == [1, 2]  # balancing: fewest ongoing chats first
    busier = max(counts, key=lambda a: counts[a])

    await h.flow("full", skill="sales", chat_policy="full-load")
    for n in range(2):
        await h.arrive(f"full-{n}", "full", media_type="chat")
    # full-load (this flow's own policy): the busier agent is filled up to its capacity
    assert {(await h.store.call(f"full-{n}") or {})["agent"] for n in range(2)} == {busier}
    assert {a: await chats_of(h, a) for a in ("a1", "a2")}[busier] == 4


async def test_full_load_is_the_global_policy_and_leaves_agents_free_for_audio(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "chat_dispatch_policy", "full-load")
    await h.agent("a1", ["sales"], chat_capacity=4)
    await h.agent("a2", ["sales"], chat_capacity=4)
    for n in range(4):
        await h.arrive(f"c{n}", media_type="chat")
    counts = sorted([await chats_of(h, "a1"), await chats_of(h, "a2")])
    assert counts == [0, 4]
    assert (await h.arrive("audio")).detail == "offered"  # the other agent is still free

    await h.redis.hset(h.store.keys.config, "chat_dispatch_policy", "balancing")
    await h.agent("b1", ["sales"], chat_capacity=4)
    await h.agent("b2", ["sales"], chat_capacity=4)
    for n in range(2):
        await h.arrive(f"d{n}", media_type="chat")
    assert {(await h.store.call(f"d{n}") or {})["agent"] for n in range(2)} == {"b1", "b2"}


async def test_chat_wrapup_holds_a_slot_back_and_wrapups_add_up(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=2, wrapup_s=10)
    t0 = h.now
    await h.arrive("c1", media_type="chat")
    await h.arrive("c2", media_type="chat")
    await answer(h, "c1", "a1")
    await answer(h, "c2", "a1")
    h.now = t0 + 1_000
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    agent = await h.store.agent("a1") or {}
    assert int(agent["wrapup_end_ms"]) == t0 + 11_000
    # one chat ongoing + one slot held by the wrap-up: a new chat waits
    assert (await h.arrive("c3", media_type="chat")).detail == "queued"
    h.now = t0 + 2_000
    await h.report("report.call_ended", "c2", by="agent", reason="bye")
    agent = await h.store.agent("a1") or {}
    assert int(agent["wrapup_end_ms"]) == t0 + 21_000  # the second wrap-up adds to the first
    assert agent["state"] == "wrap_up"  # no chat left, wrap-up running
    h.now = t0 + 20_000
    await h.store.fire_timers(now=h.now)
    assert (await h.store.call("c3") or {})["state"] == "queued"
    h.now = t0 + 21_000
    await h.store.fire_timers(now=h.now)
    assert (await h.store.call("c3") or {})["state"] == "offered"
    assert await h.state("a1") == "in_chat"


async def test_the_wrapup_end_reopens_the_held_slot_of_an_agent_still_in_chats(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=2, wrapup_s=5)
    t0 = h.now
    for call_id in ("c1", "c2"):
        await h.arrive(call_id, media_type="chat")
        await answer(h, call_id, "a1")
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    assert (await h.arrive("c3", media_type="chat")).detail == "queued"
    h.now = t0 + 5_000
    assert await h.store.fire_timers(now=h.now) == 1
    assert (await h.store.call("c3") or {})["agent"] == "a1"
    assert await chats_of(h, "a1") == 2


async def test_a_rejected_chat_goes_back_to_the_head_and_the_agent_gets_the_penalty(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=3, wrapup_s=10)
    await h.agent("a2", ["sales"], audio=False, chat_capacity=1, login=False)
    await h.arrive("c1", media_type="chat")
    await h.arrive("c2", media_type="chat")
    await answer(h, "c2", "a1")
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="rejected")
    agent = await h.store.agent("a1") or {}
    assert int(agent["wrapup_end_ms"]) == h.now + 10_000 and agent["missed"] == "1"
    # 3 slots - 1 chat - 1 held by the penalty wrap-up = 1 free: c1 is offered again at once
    assert (await h.store.call("c1") or {})["state"] == "offered"
    assert await chats_of(h, "a1") == 2
    assert (await h.arrive("c3", media_type="chat")).detail == "queued"
    await h.store.agent_login("a2", now=h.now)
    assert (await h.store.call("c3") or {})["agent"] == "a2"
    failed = [d["reason"] for _, d in await h.events("call.agent_failed")]
    assert failed == ["rejected"]


async def test_logout_and_pause_during_chats_wait_for_the_last_chat(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=4)
    await h.arrive("c1", media_type="chat")
    await answer(h, "c1", "a1")
    res = await h.store.agent_logout("a1", now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "pending")
    assert (await h.arrive("c2", media_type="chat")).detail == "queued"  # no new chat meanwhile
    res = await h.store.agent_login("a1", now=h.now)  # changed its mind: takes the waiting chat
    assert (await h.store.call("c2") or {})["agent"] == "a1"
    await h.store.agent_pause("a1", "lunch", now=h.now)
    assert (await h.arrive("c3", media_type="chat")).detail == "queued"
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    assert await h.state("a1") == "in_chat"
    await h.report("report.call_ended", "c2", by="caller", reason="cancel")
    assert await h.state("a1") == "paused"
    assert await chats_of(h, "a1") == 0
    await h.store.agent_unpause("a1", now=h.now)
    assert (await h.store.call("c3") or {})["agent"] == "a1"


async def test_statistics_count_chats_apart(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=1)
    await h.arrive("c1", media_type="chat")
    await h.arrive("c2", media_type="chat")
    stats = (await Reads(h.redis, h.store.keys).stats()).global_  # the sum of the flows' counters
    assert (stats.onhold, stats.onhold_chats) == (2, 2)
    await answer(h, "c1", "a1")
    stats = (await Reads(h.redis, h.store.keys).stats()).global_
    assert (stats.answered, stats.answered_chats, stats.onhold_chats) == (1, 1, 1)
    agent = await h.store.agent("a1") or {}
    assert agent.get("answered_chats") == "1" and agent.get("answered") is None


async def test_external_dispatch_of_a_chat_checks_the_chat_slots(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "internal_dispatching", 0)
    await h.agent("talker", ["sales"])
    await h.agent("chatter", ["sales"], audio=False, chat_capacity=1)
    await h.arrive("c1", media_type="chat")
    await h.arrive("c2", media_type="chat")
    await h.arrive("v1")
    res = await h.store.dispatch_call("c1", "talker", now=h.now)
    assert (res.rc, res.detail) == (RC.INVALID, "the agent takes no chats")
    res = await h.store.dispatch_call("v1", "chatter", now=h.now)
    assert (res.rc, res.detail) == (RC.INVALID, "the agent takes no audio calls")
    assert (await h.store.dispatch_call("c1", "chatter", now=h.now)).rc is RC.OK
    res = await h.store.dispatch_call("c2", "chatter", now=h.now)
    assert (res.rc, res.detail) == (RC.INVALID, "the agent has no free chat slot (in_chat)")


async def test_reconciler_and_force_release_free_an_agent_in_chats(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=3)
    await h.arrive("c1", media_type="chat")
    await h.arrive("c2", media_type="chat")
    await answer(h, "c1", "a1")
    await h.redis.delete(h.store.keys.call("c2"))  # a chat lost by a bug: the slot must come back
    assert await h.store.reconcile(now=h.now) == (0, 0)  # c1 still holds the agent
    assert await chats_of(h, "a1") == 1
    res = await h.store.agent_release("a1", now=h.now)
    assert (res.rc, res.detail) == (RC.OK, "free")
    hangups = [d for t, d in await h.commands() if t == "command.hangup"]
    assert [(d["call_id"], d["reason"]) for d in hangups] == [("c1", "force_release")]
    assert await chats_of(h, "a1") == 0
    released = [(d["agent_id"], d["reason"], d["from"]) for _, d in await h.events("agent.released")]
    assert released == [("a1", "forced", "in_chat")]


async def test_the_reconciler_frees_an_agent_whose_every_chat_is_gone(h: Harness) -> None:
    await h.agent("a1", ["sales"], audio=False, chat_capacity=3)
    await h.arrive("c1", media_type="chat")
    await h.redis.delete(h.store.keys.call("c1"))
    assert await h.store.reconcile(now=h.now) == (1, 0)
    assert await h.state("a1") == "free" and await chats_of(h, "a1") == 0


async def test_reject_on_no_agents_counts_the_agents_that_take_the_calls_media(h: Harness) -> None:
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 1)
    await h.agent("chatter", ["sales"], audio=False, chat=True)
    assert (await h.arrive("call")).detail == "rejected"  # nobody logged in takes audio calls
    assert (await h.arrive("chat", media_type="chat")).detail == "offered"
    await h.agent("talker", ["sales"], chat=False)
    assert (await h.arrive("call-2")).detail == "offered"
    await h.store.agent_logout("chatter", now=h.now)  # pending: it holds a chat; it counts no more
    assert (await h.arrive("chat-2", media_type="chat")).detail == "rejected"
    rejected = [(d["call_id"], d["code"]) for _, d in await h.events("call.rejected")]
    assert rejected == [("call", 480), ("chat-2", 480)]


async def test_an_unknown_media_type_is_refused(h: Harness) -> None:
    res = await h.arrive("c1", media_type="fax")
    assert (res.rc, res.detail) == (RC.INVALID, "media_type must be audio or chat")


async def test_the_flow_id_message_rides_on_the_ring_command_with_a_longer_lease(h: Harness) -> None:
    await h.flow("whispered", skill="sales", flow_id_uri="sip:flowid@127.0.0.1:7000")
    await h.agent("a1", ["sales"])
    await h.arrive("c1", "whispered")
    await h.report("report.media_answered", "c1", purpose="queue", uri="sip:queue@127.0.0.1:7000")
    ring = rings(await h.commands())[-1]
    assert ring["whisper_uri"] == "sip:flowid@127.0.0.1:7000"
    lease = await h.redis.zscore(h.store.keys.timers, "offer|c1|1")
    assert lease == h.now + (20 + 15 + 30) * 1000  # ring timeout + grace + whisper_max_s
    await h.arrive("c2")  # a flow without the message: no whisper_uri
    await h.report("report.call_ended", "c1", by="caller", reason="cancel")
    assert "whisper_uri" not in rings(await h.commands())[-1]


async def test_a_flow_id_message_flow_queues_an_unanswered_caller_first(h: Harness) -> None:
    """The message needs the caller on media: with no welcome, the call goes to the queue media first
    and is offered when that media answers, even though an agent is free at arrival."""
    await h.flow("whispered", skill="sales", flow_id_uri="sip:flowid@127.0.0.1:7000")
    await h.agent("a1", ["sales"])
    assert (await h.arrive("c1", "whispered", on_media=False)).detail == "queued"
    assert [t for t, _ in await h.commands()] == ["command.media"]
    res = await h.report("report.media_answered", "c1", purpose="queue", uri="sip:queue@127.0.0.1:7000")
    assert (res.rc, res.detail) == (RC.OK, "offered")
    assert rings(await h.commands())[-1]["whisper_uri"] == "sip:flowid@127.0.0.1:7000"
    # a second answer (the queue media bridged again) offers nothing more
    h.now += 5_000  # rejected by hand after 5 s (a phone failing at once waits out the hold first)
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="rejected")
    offers_before = len(rings(await h.commands()))  # the failed offer went back to a1 (wrap-up 0)
    res = await h.report("report.media_answered", "c1", purpose="queue", uri="sip:queue@127.0.0.1:7000")
    assert (res.rc, res.detail) == (RC.OK, "offered")
    assert len(rings(await h.commands())) == offers_before


async def test_an_agent_freed_before_the_queue_media_answers_does_not_take_the_waiting_caller(h: Harness) -> None:
    await h.flow("whispered", skill="sales", flow_id_uri="sip:flowid@127.0.0.1:7000")
    await h.agent("a1", ["sales"])
    await h.arrive("busy-maker")  # a1 rings for a call of the other flow
    assert await h.state("a1") == "ringing"
    assert (await h.arrive("c1", "whispered", on_media=False)).detail == "queued"
    await h.report("report.agent_failed", "busy-maker", offer_id="1", agent_id="a1", reason="cancelled")
    # a1 is free again (wrap-up 0), but c1's caller is not on media yet: nobody takes it
    assert (await h.store.call("c1") or {})["state"] == "queued"
    assert (await h.store.call("busy-maker") or {})["state"] == "offered"  # a1 took the other call back
    await h.report("report.agent_failed", "busy-maker", offer_id="2", agent_id="a1", reason="cancelled")
    await h.report("report.call_ended", "busy-maker", by="caller", reason="cancel")
    assert await h.state("a1") == "free" and (await h.store.call("c1") or {})["state"] == "queued"
    res = await h.report("report.media_answered", "c1", purpose="queue", uri="sip:queue@127.0.0.1:7000")
    assert (res.rc, res.detail) == (RC.OK, "offered")
