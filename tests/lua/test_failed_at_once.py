"""A single ring that fails at once (a phone busy, on do-not-disturb, unreachable) on a real
redis-server: the agent is not rung again before `refused_offer_hold_ms` from the ring, whatever its
wrap-up. With a wrap-up of 0 it used to be offered the same call again in the same step, and fail
again as fast as its phone answered: an attempt row, a missed offer and a SIP transaction per round.
A ring that fails later (rung out, rejected by hand) keeps the agent's own wrap-up, 0 included."""

from __future__ import annotations

import pytest
from lua_harness import Harness

HOLD_MS = 1000  # refused_offer_hold_ms' default


async def rings(h: Harness, call_id: str = "c1") -> list[dict[str, object]]:
    return [d for t, d in await h.commands() if t == "command.ring" and d["call_id"] == call_id]


@pytest.mark.parametrize("reason, code", [("busy", 486), ("unreachable", None), ("rejected", 603)])
async def test_the_only_agent_whose_phone_fails_at_once_is_not_rung_again_before_the_hold(
        h: Harness, reason: str, code: int | None) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.arrive("c1")
    assert len(await rings(h)) == 1
    h.now += 5
    extra = {} if code is None else {"code": code}
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason=reason, **extra)
    assert len(await rings(h)) == 1   # not again in the same step
    assert await h.state("a1") == "wrap_up"
    agent = await h.store.agent("a1")
    assert agent is not None and int(agent["wrapup_end_ms"]) == h.now - 5 + HOLD_MS
    call = await h.store.call("c1")
    assert call is not None and call["state"] == "queued"
    h.now = int(agent["wrapup_end_ms"])
    await h.store.fire_timers(now=h.now)
    again = await rings(h)
    assert len(again) == 2 and again[1]["agent_id"] == "a1" and again[1]["offer_id"] == "2"
    assert len(await h.events("call.agent_failed")) == 1


async def test_another_free_agent_takes_the_call_at_once(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=0)
    h.now += 1000
    await h.agent("a2", ["sales"], wrapup_s=0)   # a1 is idle longer: rung first
    await h.arrive("c1")
    [first] = await rings(h)
    assert first["agent_id"] == "a1"
    h.now += 3
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="busy", code=486)
    second = (await rings(h))[-1]
    assert second["agent_id"] == "a2" and second["offer_id"] == "2"
    assert [await h.state(a) for a in ("a1", "a2")] == ["wrap_up", "ringing"]


async def test_a_ring_that_fails_after_the_hold_keeps_a_wrapup_of_zero(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.arrive("c1")
    h.now += 20_000   # rung out
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="no_answer")
    again = await rings(h)
    assert len(again) == 2 and again[1]["agent_id"] == "a1"   # offered again at once, as before
    assert await h.state("a1") == "ringing"


async def test_a_longer_wrapup_is_kept(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=10)
    await h.arrive("c1")
    h.now += 5
    await h.report("report.agent_failed", "c1", offer_id="1", agent_id="a1", reason="busy", code=486)
    agent = await h.store.agent("a1")
    assert agent is not None and int(agent["wrapup_end_ms"]) == h.now + 10_000
