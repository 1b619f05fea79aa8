"""The sip-edge's side of the contract: every fact kind has its report class, every command class
its call handler, and the stack hands typed commands to the router as they are."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from callcenter.contract.codec import decode
from callcenter.contract.commands import COMMANDS, Command, Hangup, Ring, RingAll
from callcenter.contract.reports import REPORTS, CallArrived, CallEnded, CommandRefused
from callcenter.settings import EdgeSettings
from callcenter_sip_edge.facts import Fact
from callcenter_sip_edge.service import EdgeService, report_class
from callcenter_sip_edge.sip_stack import SipStack
from callcenter_sip_edge.sippy.reactor import LoopReactor

# the kinds the SIP side emits (facts.Fact): report types without `report.`
FACT_KINDS = ("call_arrived", "media_answered", "media_ended", "media_failed", "agent_answered", "agent_failed",
              "call_ended", "command_refused")


def test_every_fact_kind_has_its_own_report_class() -> None:
    assert {k: report_class(k) for k in FACT_KINDS}.keys() == set(FACT_KINDS)
    assert sorted(c.TYPE for c in map(report_class, FACT_KINDS) if c) == sorted(REPORTS)
    assert report_class("nope") is None


def test_every_command_class_has_one_call_handler() -> None:
    # in a child process: importing the call logic imports sippy and the whole SIP side, which
    # this process's other unit tests need not carry
    probe = ("import json; from callcenter_sip_edge.call import COMMAND_HANDLERS as H; "
             "print(json.dumps({c.TYPE: f.__qualname__ for c, f in H.items()}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    handlers = json.loads(out)
    assert set(handlers) == set(COMMANDS)
    assert handlers["command.ring"] == "Call.ring_command" and handlers["command.hangup"] == "Call.hangup_command"


class _Router:
    """What the stack's router gets, recorded."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def execute(self, command: Command) -> None:
        self.got.append(command)

    def hangup_all(self, reason: str) -> None:
        self.got.append(("hangup_all", reason))


def _running_stack(router: _Router, loop: asyncio.AbstractEventLoop) -> SipStack:
    """A stack whose reactor is open on this thread: a command runs at once, as a turn."""
    stack = SipStack(host="127.0.0.1", port=0, on_fact=lambda fact: None, loop=loop)
    reactor = LoopReactor(loop)
    reactor.open()
    stack._router, stack._reactor, stack._state = router, reactor, "running"
    return stack


def test_execute_hands_the_typed_command_to_the_router_at_once() -> None:
    router = _Router()
    loop = asyncio.new_event_loop()
    stack = _running_stack(router, loop)
    ring = Ring(call_id="c", offer_id="o", agent_id="7", uri="sip:7@h", timeout_s=15)
    try:
        stack.execute(ring)
        assert router.got == [ring]   # no queue: the command ran before execute returned
        stack.ring_all("c", "p", [{"agent_id": "8", "uri": "sip:8@h"}], 9, caller_display="Bob")
        stack.hangup("c", "bye")
        stack.hangup_all("edge_shutdown")
    finally:
        stack._reactor.close()   # type: ignore[union-attr]
        loop.close()
    assert router.got == [
        ring,
        RingAll(call_id="c", offer_id="p", targets=[{"agent_id": "8", "uri": "sip:8@h"}], timeout_s=9,
                caller_display="Bob"),
        Hangup(call_id="c", reason="bye"),
        ("hangup_all", "edge_shutdown"),   # no pseudo call id: the router's own entry point
    ]
    assert router.got[0] is ring  # handed on as it is, not unpacked and rebuilt


def test_the_facts_of_a_call_become_its_typed_reports_numbered_in_order() -> None:
    service = EdgeService(EdgeSettings(edge_id="e1"), redis=None)  # type: ignore[arg-type]  # no I/O here
    facts: list[tuple[str, dict[str, Any]]] = [
        ("call_arrived", {"flow": "f", "caller": "100", "caller_uri": "sip:100@h", "caller_display": None,
                     "sip_call_id": "s", "source": "127.0.0.1:5", "priority": None, "media_type": "audio"}),
        ("media_answered", {"purpose": "welcome", "uri": "sip:w@h"}),
        ("media_ended", {"purpose": "welcome"}),
        ("media_failed", {"purpose": "queue", "code": None, "reason": "unreachable"}),
        ("agent_failed", {"offer_id": "1", "agent_id": "7", "reason": "busy", "code": 486}),
        ("agent_answered", {"offer_id": "2", "agent_id": "8"}),
        ("call_ended", {"by": "caller", "reason": "bye", "code": None}),
    ]
    for ts, (kind, data) in enumerate(facts, start=10):
        service.on_fact(Fact(kind=kind, call_id="c0", data=data, ts_ms=ts))
    reports = [service._outbox.get_nowait() for _ in facts]
    assert [type(r) for r in reports] == [report_class(kind) for kind, _ in facts]
    assert [(r.call_id, r.edge, r.seq, r.ts) for r in reports] == [("c0", "e1", n, n + 9) for n in range(1, 8)]
    arrived, ended = reports[0], reports[-1]
    assert isinstance(arrived, CallArrived) and arrived.caller == "100" and arrived.caller_display is None
    assert isinstance(ended, CallEnded) and "c0" not in service._seq  # a reused call id starts at 1 again
    assert [decode(r.to_fields()).type for r in reports] == [r.TYPE for r in reports]  # valid entries
    assert "code" not in decode(ended.to_fields()).data  # None is left out, as before


def test_a_refusal_is_numbered_in_its_calls_stream_or_zero_outside_any() -> None:
    """A refusal of a live call takes the call's next seq; one of a call that has ended here takes the
    next seq after its call_ended (so it is applied after it, as a no-op); one of a call this edge
    never reported (or has forgotten) gets seq 0: the dispatcher applies it without the check."""
    service = EdgeService(EdgeSettings(edge_id="e1"), redis=None)  # type: ignore[arg-type]  # no I/O here
    arrived = {"flow": "f", "caller": "100", "caller_uri": "sip:100@h", "sip_call_id": "s", "source": "h:5"}
    refused = {"command": "command.ring", "offer_id": "1", "reason": "wrong_state"}
    unknown = {"command": "command.hangup", "offer_id": None, "reason": "unknown_call"}
    for kind, call_id, data in [("call_arrived", "c1", arrived), ("command_refused", "c1", refused),
                                ("call_ended", "c1", {"by": "caller", "reason": "bye", "code": None}),
                                ("command_refused", "c1", unknown), ("command_refused", "c1", unknown),
                                ("command_refused", "c9", unknown)]:
        service.on_fact(Fact(kind=kind, call_id=call_id, data=data, ts_ms=1))
    reports = [service._outbox.get_nowait() for _ in range(6)]
    assert [(r.call_id, r.seq) for r in reports] == [("c1", 1), ("c1", 2), ("c1", 3), ("c1", 4), ("c1", 5),
                                                      ("c9", 0)]
    assert isinstance(reports[1], CommandRefused) and reports[1].offer_id == "1"
    assert "c1" not in service._seq and "c9" not in service._seq
    # the refusals after the end, in a batch of their own, write no checkpoint: its hash is gone
    # (deleted with call_ended), and an HSET would make it again with no expiry
    assert service.checkpoints.plan(reports[3:5]).commands == []
    # a live call's refusal does write (its seq and phase)
    service.on_fact(Fact(kind="call_arrived", call_id="c2", data=arrived, ts_ms=1))
    service.on_fact(Fact(kind="command_refused", call_id="c2", data=refused, ts_ms=1))
    service.checkpoints.writer.applied(service.checkpoints.plan([service._outbox.get_nowait()]))
    assert [c[0] for c in service.checkpoints.plan([service._outbox.get_nowait()]).commands] == ["HSET"]
