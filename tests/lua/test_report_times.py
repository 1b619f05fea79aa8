"""A call's times are the edge's: a report applied late (held across a Redis outage or a dispatcher
restart) does not stretch the talk time to the moment it was applied (issue 9, acceptance 3; the
fault suite's `redis-restart-*` found CDRs with 3-9 s of talk that never happened)."""

from __future__ import annotations

from lua_harness import Harness


async def test_talk_time_runs_from_the_edges_answer_to_its_bye_however_late_the_reports_come(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")   # on media, offered to a1
    offered = h.now
    answered_at = offered + 1500
    h.now = answered_at + 4000   # the answer is applied 4 s after the edge saw it
    await h.report("report.agent_answered", "c1", ts=answered_at, offer_id="1", agent_id="a1")
    assert await h.state("a1") == "in_call"
    bye_at = answered_at + 1000
    h.now = bye_at + 9000        # the BYE after a 9 s outage
    res = await h.report("report.call_ended", "c1", ts=bye_at, by="caller", reason="bye")
    assert res.detail == "answered"
    [cdr] = [d for _, d in await h.events("call.ended")]
    assert (cdr["talk_ms"], cdr["pickup_ms"]) == (1000, 1500)


async def test_an_edge_clock_out_of_bounds_is_held_to_the_steps_own(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    offered = h.now
    h.now += 2000
    # an edge clock 60 s behind: the answer cannot come before the offer
    await h.report("report.agent_answered", "c1", ts=offered - 60_000, offer_id="1", agent_id="a1")
    h.now += 3000
    # ... and 60 s ahead: the end cannot be after this step
    await h.report("report.call_ended", "c1", ts=h.now + 60_000, by="agent", reason="bye")
    [cdr] = [d for _, d in await h.events("call.ended")]
    assert (cdr["pickup_ms"], cdr["talk_ms"]) == (0, 5000)


async def test_an_edge_clock_behind_ours_still_gives_the_true_talk_time(h: Harness) -> None:
    await h.flow()
    await h.agent("a1", ["sales"])
    await h.arrive("c1")
    skew = -30_000               # the edge's clock 30 s behind the dispatcher's
    h.now += 1000
    await h.report("report.agent_answered", "c1", ts=h.now + skew, offer_id="1", agent_id="a1")
    h.now += 2500
    await h.report("report.call_ended", "c1", ts=h.now + skew, by="caller", reason="bye")
    [cdr] = [d for _, d in await h.events("call.ended")]
    assert cdr["talk_ms"] == 2500   # one clock, the edge's, from its answer to its BYE
