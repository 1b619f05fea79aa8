"""A call's end applied by the sip-edge in the transaction that reports it (`CC_APPLY_CALL_ENDS`,
issue 15: agent BYE -> next INVITE without a dispatcher's hop), on a real redis-server: the edge's
own `ReportPublisher` sends the batch, the Lua steps run as the dispatcher would run them.

- the agent is freed and rung for the waiting call by the batch itself; the report is on the
  stream, and the dispatcher's application of it is a DUPLICATE that changes nothing;
- a call's end whose earlier report the dispatcher has not applied yet changes nothing
  (OUT_OF_ORDER); the dispatcher applies both in order later;
- Redis without the function library: the report is appended by XADD in a batch of its own (once),
  and the library is loaded for the next batch;
- turned off, the batch only appends the report;
- while the edge's process is busier than `max_cpu` of a core, the batch only appends the report
  (counted as left to the dispatchers); below it again, the edge applies the next one.
"""

from __future__ import annotations

from typing import Any

import msgpack
from lua_harness import EDGE, Harness

from callcenter.contract.codec import decode
from callcenter.contract.reports import CallArrived, CallEnded, Report
from callcenter.store import RC
from callcenter_sip_edge.checkpoint import Checkpoints
from callcenter_sip_edge.publisher import CpuShare, ReportPublisher


def publisher(h: Harness, *, apply_at_once: bool = True, max_cpu: float = 0.0,
              cpu: CpuShare | None = None) -> ReportPublisher:
    keys = h.store.keys
    return ReportPublisher(h.redis, keys, EDGE, Checkpoints(h.redis, keys, EDGE), apply_at_once=apply_at_once,
                           max_cpu=max_cpu, cpu=cpu)


class Clocks:
    """A wall clock and a CPU clock the test moves."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0

    def spend(self, wall_s: float, cpu_s: float) -> None:
        self.wall += wall_s
        self.cpu += cpu_s


async def talking_with_one_waiting(h: Harness) -> None:
    """c1 talks with a1 (wrap-up 0), c2 waits in the queue."""
    await h.flow()
    await h.agent("a1", ["sales"], wrapup_s=0)
    await h.arrive("c1")
    assert (await h.report("report.agent_answered", "c1", offer_id="1", agent_id="a1")).rc is RC.OK
    await h.arrive("c2")
    assert await h.state("a1") == "in_call"
    call = await h.store.call("c2")
    assert call is not None and call["state"] == "queued"


def call_ended(h: Harness, call_id: str, seq: int | None = None) -> CallEnded:
    seq = h.seq[call_id] + 1 if seq is None else seq
    return CallEnded(call_id=call_id, edge=EDGE, seq=seq, ts=h.now + 2000, by="agent", reason="bye")


async def reports_on_stream(h: Harness, rtype: str) -> list[tuple[str, Any]]:
    entries: Any = await h.redis.xrange(h.store.keys.reports)
    out = []
    for eid, fields in entries:
        entry = decode(fields, eid)
        if entry.type == rtype:
            out.append((entry.id, entry.raw))
    return out


async def rings_of(h: Harness, agent_id: str) -> list[str]:
    return [d["call_id"] for t, d in await h.commands() if t == "command.ring" and d["agent_id"] == agent_id]


async def test_the_batch_that_reports_the_end_frees_the_agent_and_rings_it_for_the_waiting_call(
        h: Harness) -> None:
    await talking_with_one_waiting(h)
    pub = publisher(h)
    batch: list[Report] = [call_ended(h, "c1")]
    await pub.publish(batch)
    assert pub.applied == {"OK": 1}
    assert await rings_of(h, "a1") == ["c1", "c2"]
    assert await h.state("a1") == "ringing"
    ended = await h.store.call("c1")
    assert ended is not None and ended["state"] == "ended"
    # on the stream for the dispatchers, whose application of it changes nothing
    [(entry_id, raw)] = await reports_on_stream(h, CallEnded.TYPE)
    assert msgpack.unpackb(raw)["call_id"] == "c1"
    events_before = len(await h.events())
    res = await h.store.apply_report(CallEnded.TYPE, entry_id, raw)
    assert res.rc is RC.DUPLICATE
    assert len(await h.events()) == events_before and await rings_of(h, "a1") == ["c1", "c2"]


async def test_an_end_ahead_of_an_unapplied_report_changes_nothing_until_the_dispatcher_applies_both(
        h: Harness) -> None:
    await talking_with_one_waiting(h)
    pub = publisher(h)
    # seq + 2: the report before it (seq + 1) is on the stream but no dispatcher has applied it yet
    end = call_ended(h, "c1", seq=h.seq["c1"] + 2)
    await pub.publish([end])
    assert pub.applied == {"OUT_OF_ORDER": 1}
    assert await h.state("a1") == "in_call" and await rings_of(h, "a1") == ["c1"]
    [(entry_id, raw)] = await reports_on_stream(h, CallEnded.TYPE)
    assert (await h.store.apply_report(CallEnded.TYPE, entry_id, raw)).rc is RC.OUT_OF_ORDER
    # the missing report, then the end again (as the dispatcher retries a parked one)
    await h.report("report.media_failed", "c1", purpose="queue", reason="x")
    assert (await h.store.apply_report(CallEnded.TYPE, entry_id, raw)).rc is RC.OK
    assert await rings_of(h, "a1") == ["c1", "c2"]


async def test_without_the_function_library_the_end_is_appended_once_by_xadd_and_the_library_loaded(
        h: Harness) -> None:
    await talking_with_one_waiting(h)
    pub = publisher(h)
    await h.redis.function_flush()
    await pub.publish([call_ended(h, "c1")])
    assert pub.applied == {"ERROR": 1}
    [(entry_id, raw)] = await reports_on_stream(h, CallEnded.TYPE)
    assert await h.state("a1") == "in_call"   # left to the dispatcher
    assert (await h.store.apply_report(CallEnded.TYPE, entry_id, raw)).rc is RC.OK
    assert await rings_of(h, "a1") == ["c1", "c2"]
    # loaded again by the edge: the next end is applied by its batch
    libraries: Any = await h.redis.function_list()
    assert len(libraries) == 1
    await h.report("report.agent_answered", "c2", offer_id="2", agent_id="a1")
    await pub.publish([call_ended(h, "c2")])
    assert pub.applied == {"ERROR": 1, "OK": 1}
    call = await h.store.call("c2")
    assert call is not None and call["state"] == "ended"


async def test_turned_off_the_batch_only_appends_the_end(h: Harness) -> None:
    await talking_with_one_waiting(h)
    pub = publisher(h, apply_at_once=False)
    await pub.publish([call_ended(h, "c1")])
    assert pub.applied == {}
    assert len(await reports_on_stream(h, CallEnded.TYPE)) == 1
    assert await h.state("a1") == "in_call" and await rings_of(h, "a1") == ["c1"]


async def test_busier_than_max_cpu_the_end_is_left_to_the_dispatchers_and_applied_again_when_quieter(
        h: Harness) -> None:
    await talking_with_one_waiting(h)
    clocks = Clocks()
    cpu = CpuShare(1.0, wall=lambda: clocks.wall, cpu=lambda: clocks.cpu)
    pub = publisher(h, max_cpu=0.6, cpu=cpu)
    clocks.spend(1.0, 0.8)   # 80 % of a core over the last second
    await pub.publish([call_ended(h, "c1")])
    assert pub.applied == {} and pub.left == 1
    [(entry_id, raw)] = await reports_on_stream(h, CallEnded.TYPE)
    assert await h.state("a1") == "in_call" and await rings_of(h, "a1") == ["c1"]
    assert (await h.store.apply_report(CallEnded.TYPE, entry_id, raw)).rc is RC.OK   # the dispatcher's turn
    assert await rings_of(h, "a1") == ["c1", "c2"]
    await h.report("report.agent_answered", "c2", offer_id="2", agent_id="a1")
    clocks.spend(0.5, 0.0)   # within the window: still the busy second's share
    await h.arrive("c3")
    await pub.publish([call_ended(h, "c2")])
    assert pub.applied == {} and pub.left == 2
    assert (await h.store.apply_report(CallEnded.TYPE, *(await reports_on_stream(h, CallEnded.TYPE))[1])).rc is RC.OK
    await h.report("report.agent_answered", "c3", offer_id="3", agent_id="a1")
    await h.arrive("c4")
    clocks.spend(1.0, 0.3)   # 1.5 s since the last window, 0.3 s of CPU: 20 %
    await pub.publish([call_ended(h, "c3")])
    assert pub.applied == {"OK": 1} and pub.left == 2
    assert await rings_of(h, "a1") == ["c1", "c2", "c3", "c4"]


async def test_other_reports_of_the_batch_are_appended_for_the_dispatcher_in_their_order(h: Harness) -> None:
    await talking_with_one_waiting(h)
    pub = publisher(h)
    arrived = CallArrived(call_id="c3", edge=EDGE, seq=1, ts=h.now, flow="support", caller="bob",
                          caller_uri="sip:bob@127.0.0.1", sip_call_id="c3@x", source="127.0.0.1:1")
    ended = CallEnded(call_id="c2", edge=EDGE, seq=h.seq["c2"] + 1, ts=h.now, by="caller", reason="bye")
    await pub.publish([call_ended(h, "c1"), arrived, ended])
    assert pub.applied == {"OK": 2}
    # c1's end rang a1 for c2, whose own end then cancelled that ring; c3 waits for a dispatcher
    assert await h.state("a1") == "free"
    assert await h.store.call("c3") is None
    entries: Any = await h.redis.xrange(h.store.keys.reports)
    assert [(e.type, e.data["call_id"]) for e in (decode(f, i) for i, f in entries)][-3:] == [
        (CallEnded.TYPE, "c1"), (CallArrived.TYPE, "c3"), (CallEnded.TYPE, "c2")]
