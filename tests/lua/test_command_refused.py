"""report_command_refused on a real redis-server: a command the edge did not carry out is acted on at
once. A refused ring or ring_all frees its agents with no penalty (no wrap-up, no missed offer) and
puts the call back at the head of its queue, held until its media answers (or for
`refused_offer_hold_ms`), then offered again; a refused media plays no part in the call's story
beyond what media_failed would; refused cancel_ring, reject and hangup of a call already gone are
no-ops; a refusal for a call its edge does not know ends the call with a true record."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from lua_harness import EDGE, Harness

from callcenter.store import RC

HOLD_MS = 1000  # refused_offer_hold_ms' default


async def _ring(h: Harness, call_id: str = "c1") -> dict[str, Any]:
    rings = [d for t, d in await h.commands() if t in ("command.ring", "command.ring_all") and d["call_id"] == call_id]
    return rings[-1]


async def refuse(h: Harness, call_id: str, command: str, reason: str = "wrong_state", seq: int | None = None,
                 **extra: Any) -> Any:
    return await h.report("report.command_refused", call_id, seq=seq, command=command, reason=reason, **extra)


async def test_a_refused_ring_frees_the_agent_at_once_and_re_offers_when_the_queue_media_answers(h: Harness) -> None:
    """B5: the welcome failed, the queue leg is being set up, the ring comes back refused."""
    await h.flow(welcome_uri="sip:welcome@127.0.0.1:7001")
    await h.agent("a1", ["sales"], login=False)
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    # the early offer: an agent may ring before the caller is on media (else it waits for the queue leg)
    await h.redis.hset(h.store.keys.config, "ring_before_media", 1)
    await h.arrive("c1")
    assert (await h.report("report.media_failed", "c1", purpose="welcome", reason="unreachable")).detail == "queued"
    await h.store.agent_login("a1", now=h.now)
    ring = await _ring(h)
    assert ring["agent_id"] == "a1" and await h.state("a1") == "ringing"

    res = await refuse(h, "c1", "command.ring", offer_id=ring["offer_id"])
    assert res.rc is RC.OK
    assert await h.state("a1") == "free"       # at once, not after ring timeout + lease grace
    agent = await h.store.agent("a1")
    assert agent is not None and agent.get("missed", "0") == "0" and agent.get("missed_in_row", "0") == "0"
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "queued" and call["rejections"] == "0"
    assert [d["reason"] for _, d in await h.events("call.agent_failed")] == ["refused"]
    # held: a free agent does not take it back while the edge is busy with its queue leg
    assert len([t for t, _ in await h.commands() if t == "command.ring"]) == 1
    assert f"offer|c1|{ring['offer_id']}".encode() not in await h.redis.zrange(h.store.keys.timers, 0, -1)

    res = await h.report("report.media_answered", "c1", purpose="queue", uri="sip:queue@127.0.0.1:7000")
    again = await _ring(h)
    assert again["offer_id"] != ring["offer_id"] and again["agent_id"] == "a1"
    assert await h.state("a1") == "ringing"


async def test_a_held_call_is_offered_again_when_its_hold_ends(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    ring = await _ring(h)
    await refuse(h, "c1", "command.ring", offer_id=ring["offer_id"])
    assert await h.state("a1") == "free"
    h.now += HOLD_MS - 1
    await h.store.fire_timers(now=h.now)
    assert await h.state("a1") == "free"
    h.now += 1
    assert await h.store.fire_timers(now=h.now) == 1
    assert (await _ring(h))["offer_id"] != ring["offer_id"] and await h.state("a1") == "ringing"


async def test_a_held_head_does_not_take_a_freed_agent_but_the_next_flow_may(h: Harness) -> None:
    await h.flow()
    await h.flow("other", priority=300)
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    ring = await _ring(h)
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.arrive("c2", flow="other")   # a1 is ringing for c1: c2 waits in the other flow
    await refuse(h, "c1", "command.ring", offer_id=ring["offer_id"])
    # a1 is free at once and takes the call that can be offered, not the held one
    assert (await _ring(h, "c2"))["agent_id"] == "a1"
    assert (await h.store.call("c1") or {})["state"] == "queued"


async def test_a_refused_ring_all_frees_every_agent_without_penalty(h: Harness) -> None:
    await h.flow(strategy="ring-all")
    await h.agent("a1", ["sales"], wrapup_s=30)
    await h.agent("a2", ["sales"], wrapup_s=30)
    await h.arrive("c1")
    ring = await _ring(h)
    assert ring["targets"] and await h.state("a1") == "ringing" and await h.state("a2") == "ringing"
    await refuse(h, "c1", "command.ring_all", reason="no_targets", offer_id=ring["offer_id"])
    assert [await h.state(a) for a in ("a1", "a2")] == ["free", "free"]
    assert sorted(d["agent_id"] for _, d in await h.events("call.agent_failed")) == ["a1", "a2"]
    assert (await h.store.call("c1") or {})["state"] == "queued"


async def test_a_refusal_of_an_offer_already_taken_back_is_stale(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    ring = await _ring(h)
    assert (await refuse(h, "c1", "command.ring", offer_id="99")).rc is RC.STALE
    assert await h.state("a1") == "ringing" and (await _ring(h))["offer_id"] == ring["offer_id"]


async def test_refused_cancel_ring_reject_and_hangup_change_nothing(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    ring = await _ring(h)
    before = await h.store.call("c1")
    for command in ("command.cancel_ring", "command.reject", "command.hangup"):
        res = await refuse(h, "c1", command, offer_id=ring["offer_id"] if command == "command.cancel_ring" else None)
        assert res.rc is RC.OK
    after = await h.store.call("c1")
    assert before is not None and after is not None
    assert {k: v for k, v in after.items() if k != "seq"} == {k: v for k, v in before.items() if k != "seq"}
    assert await h.state("a1") == "ringing"


async def test_a_refusal_after_the_call_ended_is_a_no_op(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.arrive("c1")
    await h.report("report.call_ended", "c1", by="caller", reason="cancel")
    events = len(await h.events())
    for command in ("command.ring", "command.hangup", "command.media"):
        assert (await refuse(h, "c1", command, reason="unknown_call")).detail == "gone"
    assert (await refuse(h, "c1", "command.hangup", reason="unknown_call", seq=0)).detail == "gone"
    assert (await refuse(h, "nope", "command.hangup", reason="unknown_call", seq=0)).detail == "gone"
    assert len(await h.events()) == events


async def test_a_live_call_its_edge_does_not_know_ends_with_a_true_record(h: Harness) -> None:
    """seq 0: the edge has no report stream for the call (restarted, or it ended long ago): the call
    is over at the edge, whatever Redis thought; its agent is freed with no penalty."""
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=30)
    await h.arrive("c1")
    ring = await _ring(h)
    res = await refuse(h, "c1", "command.ring", reason="unknown_call", seq=0, offer_id=ring["offer_id"])
    assert (res.rc, res.detail) == (RC.OK, "ended")
    assert await h.state("a1") == "free"
    [(_, cdr)] = await h.events("call.ended")
    assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "edge", "unknown_call")
    # applied outside the call's stream: a report the edge numbered before it is still in order
    # (seq 2 was the queue media's answer that put the caller on media: h.arrive)
    assert (await h.report("report.call_ended", "c1", seq=3, by="caller", reason="bye")).rc is RC.OK
    assert len(await h.events("call.ended")) == 1
    # another edge's refusal does not end this edge's call
    await h.arrive("c2")
    other = {"call_id": "c2", "edge": "edge-other", "seq": 0, "ts": h.now, "command": "command.hangup",
             "reason": "unknown_call"}
    res = await h.store.apply_report("report.command_refused", "0-1", msgpack.packb(other), now=h.now)
    assert res.rc is RC.STALE
    assert (await h.store.call("c2") or {})["edge"] == EDGE and len(await h.events("call.ended")) == 1


async def test_a_refused_media_that_can_never_play_is_handled_as_a_failed_one(h: Harness) -> None:
    await h.flow(welcome_uri="sip:welcome@127.0.0.1:7001")
    await h.agent("a1", ["sales"], login=False)
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.arrive("c1")
    # the welcome cannot play: the call is routed as if it had ended (queued here)
    res = await refuse(h, "c1", "command.media", reason="bad_purpose", purpose="welcome")
    assert (res.rc, res.detail) == (RC.OK, "queued")
    # the queue media cannot play either: nothing left for the caller to hear, a true CDR
    res = await refuse(h, "c1", "command.media", reason="bad_purpose", purpose="queue")
    assert (res.rc, res.detail) == (RC.OK, "ended")
    [(_, cdr)] = await h.events("call.ended")
    assert (cdr["outcome"], cdr["reason"]) == ("failed", "media_failed")
    assert ("command.reject", {"call_id": "c1", "code": 503, "reason": "Media Unavailable"}) in await h.commands()


async def test_a_media_refused_while_the_edge_sets_up_another_leg_keeps_the_call(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], login=False)
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.arrive("c1")
    assert (await h.store.call("c1") or {})["media"] == "queue"
    res = await refuse(h, "c1", "command.media", purpose="queue")
    assert (res.rc, res.detail) == (RC.OK, "kept")
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "queued" and call["media"] == ""
    assert (await refuse(h, "c1", "command.media", purpose="dissuading")).rc is RC.STALE


async def test_the_answer_that_ends_a_hold_marks_the_caller_answered(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    ring = await _ring(h)
    await refuse(h, "c1", "command.ring", offer_id=ring["offer_id"])
    res = await h.report("report.media_answered", "c1", purpose="queue", uri="sip:queue@127.0.0.1:7000")
    assert res.detail == "offered"
    assert (await h.store.call("c1") or {}).get("answered_ms") == str(h.now)


async def _held_head_with_a_call_behind(h: Harness) -> None:
    """c1 rings a1 and c2 waits behind it; the edge refuses c1's ring: a1 is free, c1 held at the
    head, c2 waits behind it (documented: the calls behind a held call wait too)."""
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.arrive("c1")
    await h.arrive("c2")
    await refuse(h, "c1", "command.ring", offer_id=(await _ring(h))["offer_id"])
    assert await h.state("a1") == "free" and (await h.store.call("c2") or {})["state"] == "queued"


@pytest.mark.parametrize("how", ["caller_hangs_up", "edge_forgets_it"])
async def test_the_call_behind_a_held_call_is_offered_when_the_held_call_ends(h: Harness, how: str) -> None:
    """Found by the state machine: the held head ended (the edge forgot it: a seq-0 refusal) and the
    call behind it kept waiting while a1 was free, since nothing offers a queue's next call when its
    head leaves."""
    await _held_head_with_a_call_behind(h)
    if how == "caller_hangs_up":
        res = await h.report("report.call_ended", "c1", by="caller", reason="bye")
    else:
        res = await refuse(h, "c1", "command.hangup", reason="unknown_call", seq=0)
    assert res.rc is RC.OK
    assert (await _ring(h, "c2"))["agent_id"] == "a1" and await h.state("a1") == "ringing"


async def test_the_calls_behind_a_held_call_are_offered_when_its_hold_ends(h: Harness) -> None:
    """A hold that ends offers the held call, and the calls behind it to the other free agents."""
    await _held_head_with_a_call_behind(h)
    await h.agent("a2", ["sales"])  # free: c2 still waits behind the held head
    assert (await h.store.call("c2") or {})["state"] == "queued"
    res = await h.report("report.media_answered", "c1", purpose="queue", uri="sip:queue@127.0.0.1:7000")
    assert res.detail == "offered"
    assert {(await _ring(h, c))["agent_id"] for c in ("c1", "c2")} == {"a1", "a2"}


@pytest.mark.parametrize("leaves_by", ["overflow_flow", "overflow_uri", "dissuading_on_hold"])
async def test_a_held_call_that_leaves_its_queue_ends_its_hold_and_the_calls_behind_it_are_offered(
        h: Harness, leaves_by: str) -> None:
    """A held head that leaves its queue on a timer (maximum wait, time on hold) is held no more,
    and the call behind it is offered to the free agent at once, as when the head ends."""
    fields = {"overflow_flow": {"max_wait_s": 1, "overflow_flow": "other"},
              "overflow_uri": {"max_wait_s": 1, "overflow_uri": "sip:voicemail@127.0.0.1:7200"},
              "dissuading_on_hold": {"dissuading_uri": "sip:diss@127.0.0.1:7300", "dissuading_onhold_th": 1}}
    await h.redis.hset(h.store.keys.config, "refused_offer_hold_ms", 60_000)
    await h.flow("other", skill="nobody")
    await h.flow(**fields[leaves_by])
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.redis.hset(h.store.keys.config, "reject_on_no_agents", 0)
    await h.arrive("c1")
    h.now += 500
    await h.arrive("c2")
    await refuse(h, "c1", "command.ring", offer_id=(await _ring(h))["offer_id"])
    assert (await h.store.call("c2") or {})["state"] == "queued" and await h.state("a1") == "free"
    # c1's timer is due: maximum wait counts from the arrival (c2's is due later); time on hold from
    # the queueing, the same time for both (a tie: timers run in member order, c1's first)
    h.now += 1000 if leaves_by == "dissuading_on_hold" else 500
    await h.store.fire_timers(now=h.now)
    c1 = await h.store.call("c1")
    assert c1 is not None and c1["state"] != "offered" and c1.get("held_until_ms", "") == ""
    assert b"held|c1" not in await h.redis.zrange(h.store.keys.timers, 0, -1)
    assert (await _ring(h, "c2"))["agent_id"] == "a1" and await h.state("a1") == "ringing"


async def test_a_ring_refused_not_registered_pauses_the_agent_without_penalty(h: Harness) -> None:
    """An agent rung at its AOR with no live contact (the edge refuses `not_registered`): freed as
    paused `unregistered` (it would only be refused again), no missed offer; the call offered to the
    next agent."""
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    ring = await _ring(h)
    assert ring["agent_id"] == "a1"
    await h.agent("a2", ["sales"])
    res = await refuse(h, "c1", "command.ring", reason="not_registered", offer_id=ring["offer_id"])
    assert res.rc is RC.OK
    agent = await h.store.agent("a1") or {}
    assert (agent["state"], agent["pause_reason"]) == ("paused", "unregistered")
    assert agent.get("missed", "0") == "0" and agent.get("missed_in_row", "0") == "0"
    assert [d["reason"] for _, d in await h.events("agent.paused")] == ["unregistered"]
    h.now += HOLD_MS
    await h.store.fire_timers(now=h.now)
    assert (await _ring(h))["agent_id"] == "a2"
