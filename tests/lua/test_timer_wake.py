"""The timer loops' wake-up (issue 15): a step whose timer became the first due pushes one element
on `cc:{t}:timer_wake`; fire_timers answers when the first timer left is due and empties the list.
Together they let a dispatcher sleep until that time instead of polling."""

from __future__ import annotations

from lua_harness import Harness

from callcenter.store import RC


async def wake_len(h: Harness) -> int:
    return int(await h.redis.llen(h.store.keys.timer_wake))


async def test_no_timer_no_wake_and_nothing_due(h: Harness) -> None:
    assert await h.store.fire_timers_next(now=h.now) == (0, None)
    assert await wake_len(h) == 0


async def test_the_first_timer_wakes_a_later_one_does_not(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")   # offered: its lease is the only timer, so the first due
    lease_1 = h.now + (20 + 15) * 1000
    assert await h.redis.zscore(h.store.keys.timers, "offer|c1|1") == lease_1
    assert await wake_len(h) == 1
    # the loop's pass empties it and says when to come back
    assert await h.store.fire_timers_next(now=h.now) == (0, lease_1)
    assert await wake_len(h) == 0
    await h.agent("a2", ["sales"])
    h.now += 1000
    await h.arrive("c2")   # a lease due after the first one: no wake-up
    assert await h.redis.zrange(h.store.keys.timers, 0, -1, withscores=True) == [
        (b"offer|c1|1", lease_1), (b"offer|c2|1", lease_1 + 1000)]
    assert await wake_len(h) == 0
    assert await h.store.fire_timers_next(now=h.now) == (0, lease_1)


async def test_an_earlier_timer_wakes_and_the_list_holds_one_at_most(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    assert await h.store.fire_timers_next(now=h.now) == (0, h.now + 35_000)
    # a flow with a maximum wait: its queued calls get a timer due before that lease
    await h.flow("short", max_wait_s=5)   # a1 rings with c1: its calls wait
    await h.arrive("q1", flow="short")
    assert await h.redis.zscore(h.store.keys.timers, "maxwait|q1") == h.now + 5000
    assert await wake_len(h) == 1
    h.now -= 1000   # earlier still: the first due again, the wake-up already there
    await h.arrive("q2", flow="short")
    assert await wake_len(h) == 1
    h.now += 1000
    assert await h.store.fire_timers_next(now=h.now) == (0, h.now + 4000)
    assert await wake_len(h) == 0
    # fired: the first due moves on to the next timer
    assert await h.store.fire_timers_next(now=h.now + 4000) == (1, h.now + 5000)


async def test_timers_fired_by_the_pass_that_add_timers_are_counted_in_its_answer(h: Harness) -> None:
    await h.flow(max_wait_s=3)
    await h.agent("a1", ["sales"], wrapup_s=2)
    assert (await h.arrive("c1")).detail == "offered"
    await h.report("report.agent_answered", "c1", agent_id="a1", offer_id="1")
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    assert await h.state("a1") == "wrap_up"
    await h.arrive("c2")   # queued behind the wrap-up, its maximum wait after it
    assert await h.store.fire_timers_next(now=h.now) == (0, h.now + 2000)
    # the wrap-up ends: a1 is offered c2 in the same pass, whose lease is now the last timer
    h.now += 2000
    fired, first = await h.store.fire_timers_next(now=h.now)
    assert fired == 1 and first == h.now - 2000 + 3000   # c2's maximum wait, still armed
    assert await wake_len(h) == 0


async def test_a_wake_up_key_of_the_wrong_type_fails_no_step(h: Harness) -> None:
    await h.redis.set(h.store.keys.timer_wake, "not a list")
    await h.flow()
    await h.agent("a1", ["sales"])
    res = await h.arrive("c1")
    assert res.rc is RC.OK and res.detail == "offered"
    assert await h.redis.zscore(h.store.keys.timers, "offer|c1|1") == h.now + 35_000
    # the pass deletes it, so the loops can wait on it again
    assert await h.store.fire_timers_next(now=h.now) == (0, h.now + 35_000)
    assert await h.redis.exists(h.store.keys.timer_wake) == 0
