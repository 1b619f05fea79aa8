"""The timer loops' wake-up (issue 15): fire_timers, run by a loop with its longest sleep, answers
when the first timer left is due and writes when that loop looks again (`cc:{t}:timer_sleep`); a
step that adds a timer due before then pushes one element on `cc:{t}:timer_wake` (the list the
loop waits on with BLPOP), and fire_timers empties it. So a dispatcher sleeps until it has
something to do instead of polling, and a timer due sooner wakes it."""

from __future__ import annotations

from lua_harness import Harness

from callcenter.store import RC

SLEEP_MAX_MS = 1000
LEASE_MS = (20 + 15) * 1000   # ring timeout and lease grace: an offer's timer


async def wake_len(h: Harness) -> int:
    return int(await h.redis.llen(h.store.keys.timer_wake))


async def asleep_until(h: Harness) -> int | None:
    raw = await h.redis.get(h.store.keys.timer_sleep)
    return None if raw is None else int(raw)


async def loop_pass(h: Harness) -> tuple[int, int | None]:
    return await h.store.fire_timers_next(now=h.now, sleep_max_ms=SLEEP_MAX_MS)


async def test_no_timer_the_loop_sleeps_its_longest(h: Harness) -> None:
    assert await loop_pass(h) == (0, None)
    assert await asleep_until(h) == h.now + SLEEP_MAX_MS
    assert await wake_len(h) == 0


async def test_a_timer_due_after_the_loop_looks_again_wakes_nobody(h: Harness) -> None:
    await loop_pass(h)
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")   # offered: its lease is due in 35 s, after the loop's next pass
    assert await h.redis.zscore(h.store.keys.timers, "offer|c1|1") == h.now + LEASE_MS
    assert await wake_len(h) == 0
    assert await loop_pass(h) == (0, h.now + LEASE_MS)
    assert await asleep_until(h) == h.now + SLEEP_MAX_MS   # its longest sleep comes first


async def test_a_timer_due_sooner_wakes_the_loop_once(h: Harness) -> None:
    await h.flow()
    await h.flow("short", max_wait_s=5)
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    # a loop whose longest sleep is 10 s: it looks again then (c1's lease is later)
    assert await h.store.fire_timers_next(now=h.now, sleep_max_ms=10_000) == (0, h.now + LEASE_MS)
    assert await asleep_until(h) == h.now + 10_000
    await h.arrive("q1", flow="short")   # a1 rings with c1: q1 waits, its maximum wait due in 5 s, before that
    assert await h.redis.zscore(h.store.keys.timers, "maxwait|q1") == h.now + 5000
    assert await wake_len(h) == 1
    await h.arrive("q2", flow="short")   # the same: the list holds one wake-up at most
    assert await wake_len(h) == 1
    assert await loop_pass(h) == (0, h.now + 5000)
    assert await wake_len(h) == 0
    assert await asleep_until(h) == h.now + SLEEP_MAX_MS


async def test_with_no_loop_known_every_timer_may_wake_one(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")   # no timer_sleep yet (no loop ran): a wake-up, in case one waits
    assert await asleep_until(h) is None
    assert await wake_len(h) == 1
    # a pass of another caller (a test, a tool) leaves the loop's time as it is
    assert await h.store.fire_timers_next(now=h.now) == (0, h.now + LEASE_MS)
    assert await asleep_until(h) is None and await wake_len(h) == 0


async def test_timers_added_by_the_pass_itself_are_in_its_answer(h: Harness) -> None:
    await h.flow(max_wait_s=3)
    await h.agent("a1", ["sales"], wrapup_s=2)
    assert (await h.arrive("c1")).detail == "offered"
    await h.report("report.agent_answered", "c1", agent_id="a1", offer_id="1")
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    assert await h.state("a1") == "wrap_up"
    await h.arrive("c2")   # queued behind the wrap-up, its maximum wait after it
    assert await loop_pass(h) == (0, h.now + 2000)   # the wrap-up's end
    assert await asleep_until(h) == h.now + SLEEP_MAX_MS   # the loop's longest sleep comes first
    # the wrap-up ends: a1 is offered c2 in the same pass; c2's maximum wait is still armed
    h.now += 2000
    fired, first = await loop_pass(h)
    assert fired == 1 and first == h.now + 1000
    assert await asleep_until(h) == h.now + 1000
    assert await wake_len(h) == 0


async def test_wake_up_keys_of_the_wrong_type_fail_no_step(h: Harness) -> None:
    await h.redis.set(h.store.keys.timer_wake, "not a list")
    await h.redis.hset(h.store.keys.timer_sleep, "not", "a string")
    await h.flow()
    await h.agent("a1", ["sales"])
    res = await h.arrive("c1")
    assert res.rc is RC.OK and res.detail == "offered"
    assert await h.redis.zscore(h.store.keys.timers, "offer|c1|1") == h.now + LEASE_MS
    # the loop's pass puts both right
    assert await loop_pass(h) == (0, h.now + LEASE_MS)
    assert await h.redis.exists(h.store.keys.timer_wake) == 0
    assert await asleep_until(h) == h.now + SLEEP_MAX_MS
