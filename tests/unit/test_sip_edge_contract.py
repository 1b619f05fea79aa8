"""The sip-edge's side of the contract: every fact kind has its report class, every command class
its SIP action."""

from __future__ import annotations

from typing import Any

from callcenter.contract.codec import decode
from callcenter.contract.commands import COMMANDS, Hangup, Ring, RingAll
from callcenter.contract.reports import REPORTS, CallArrived, CallEnded
from callcenter.settings import EdgeSettings
from callcenter_sip_edge.service import EdgeService, report_class
from callcenter_sip_edge.sip_stack import _EXECUTE, Fact, SipStack

FACT_KINDS = ("arrived", "media_answered", "media_ended", "media_failed", "agent_answered", "agent_failed",
              "ended")  # the kinds the SIP side emits today (sip_stack.Fact)


def test_every_fact_kind_has_its_own_report_class() -> None:
    assert {k: report_class(k) for k in FACT_KINDS}.keys() == set(FACT_KINDS)
    assert sorted(c.TYPE for c in map(report_class, FACT_KINDS) if c) == sorted(REPORTS)
    assert report_class("nope") is None


def test_every_command_class_has_one_sip_action() -> None:
    assert set(_EXECUTE) == set(COMMANDS.values())


class _Recorder(SipStack):
    """A stack that records what the per-command methods are called with instead of queuing it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _submit(self, command: str, call_id: str, *args: Any) -> None:
        self.calls.append((command, (call_id, *args)))


def test_execute_forwards_a_typed_command_to_its_method() -> None:
    stack = _Recorder()
    stack.execute(Ring(call_id="c", offer_id="o", agent_id="7", uri="sip:7@h", timeout_s=15))
    stack.execute(RingAll(call_id="c", offer_id="p", targets=[{"agent_id": "8", "uri": "sip:8@h"}], timeout_s=9,
                          caller_display="Bob"))
    stack.execute(Hangup(call_id="c", reason="bye"))
    assert stack.calls == [
        ("ring", ("c", "o", "7", "sip:7@h", 15.0, None, None)),
        ("ring_all", ("c", "p", [{"agent_id": "8", "uri": "sip:8@h"}], 9.0, "Bob")),
        ("hangup", ("c", "bye")),
    ]
    assert isinstance(stack.calls[0][1][4], float)  # timeout_s may come from Lua as an integer


def test_the_facts_of_a_call_become_its_typed_reports_numbered_in_order() -> None:
    service = EdgeService(EdgeSettings(edge_id="e1"), redis=None)  # type: ignore[arg-type]  # no I/O here
    facts: list[tuple[str, dict[str, Any]]] = [
        ("arrived", {"flow": "f", "caller_user": "100", "caller_uri": "sip:100@h", "caller_display": None,
                     "sip_call_id": "s", "source": "127.0.0.1:5", "priority": None, "media_type": "audio"}),
        ("media_answered", {"purpose": "welcome", "uri": "sip:w@h"}),
        ("media_ended", {"purpose": "welcome"}),
        ("media_failed", {"purpose": "queue", "code": None, "reason": "unreachable"}),
        ("agent_failed", {"offer_id": "1", "agent_id": "7", "reason": "busy", "code": 486}),
        ("agent_answered", {"offer_id": "2", "agent_id": "8"}),
        ("ended", {"by": "caller", "reason": "bye", "code": None}),
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
