"""Typed reports and commands: one class per registry type, same fields, one codec both ways."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from callcenter.contract.codec import DecodeError, Entry, Message, decode
from callcenter.contract.commands import COMMANDS, Hangup, Ring, RingAll, command_of
from callcenter.contract.reports import REPORTS, CallArrived, report_of
from callcenter.contract.streams import COMMANDS as COMMANDS_STREAM
from callcenter.contract.streams import REPORTS as REPORTS_STREAM
from callcenter.contract.streams import STREAMS
from callcenter.contract.types import TYPES

GOLDEN = Path(__file__).resolve().parents[2] / "docs" / "events" / "golden"
TYPED: dict[str, type[Message]] = {**COMMANDS, **REPORTS}


def test_every_report_and_command_type_has_a_class() -> None:
    assert set(COMMANDS) == {n for n in TYPES if n.startswith("command.")}
    assert set(REPORTS) == {n for n in TYPES if n.startswith("report.")}


@pytest.mark.parametrize("type_name", sorted(TYPED))
def test_class_fields_are_the_registry_fields(type_name: str) -> None:
    et, cls = TYPES[type_name], TYPED[type_name]
    by_name = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    assert set(by_name) == set(et.required) | set(et.optional)
    assert all(by_name[n].default is MISSING for n in et.required)  # required: no default
    assert all(by_name[n].default is None for n in et.optional)
    assert cls.__dataclass_params__.frozen and "__slots__" in cls.__dict__  # type: ignore[attr-defined]


@pytest.mark.parametrize("type_name", sorted(TYPED))
def test_golden_example_decodes_to_its_class_and_back(type_name: str) -> None:
    expected = json.loads((GOLDEN / f"{type_name}.json").read_text())
    raw = (GOLDEN / f"{type_name}.msgpack").read_bytes()
    entry = decode({b"type": type_name.encode(), b"v": b"1", b"data": raw}, "1-0")
    typed = (command_of if type_name.startswith("command.") else report_of)(entry)
    assert type(typed) is TYPED[type_name]
    written = {k: v for k, v in expected["data"].items() if v is not None}  # None is written as absent
    assert typed.to_data() == written
    assert decode(typed.to_fields()).data == written


def test_optional_fields_left_at_none_are_not_written() -> None:
    ring = Ring(call_id="c", offer_id="o", agent_id="7", uri="sip:7@a", timeout_s=15)
    data = decode(ring.to_fields()).data
    assert data == {"call_id": "c", "offer_id": "o", "agent_id": "7", "uri": "sip:7@a", "timeout_s": 15}
    assert command_of(decode(ring.to_fields())) == ring


def test_fields_added_by_a_newer_producer_are_ignored() -> None:
    entry = Entry(type="command.hangup", v=1, data={"call_id": "c", "reason": "x", "future": 1})
    assert command_of(entry) == Hangup(call_id="c", reason="x")


def test_a_report_is_not_a_command_and_a_class_takes_only_its_type() -> None:
    arrived = CallArrived(call_id="c", edge="e", seq=1, ts=5, flow="f", caller="100",
                          caller_uri="sip:100@x", sip_call_id="s", source="127.0.0.1")
    entry = decode(arrived.to_fields())
    assert report_of(entry) == arrived
    with pytest.raises(DecodeError, match=r"report\.call_arrived"):
        command_of(entry)
    with pytest.raises(DecodeError, match=r"is not command\.ring_all"):
        RingAll.from_entry(entry)


def test_a_bad_typed_producer_fails_at_encode() -> None:
    with pytest.raises(DecodeError, match="field 'code'"):
        COMMANDS["command.reject"](call_id="c", code="480", reason="x").to_fields()  # type: ignore[call-arg]


def test_each_stream_consumer_group_is_named_once() -> None:
    groups = [s.group for s in STREAMS if s.group]
    assert sorted(groups) == ["cdr-writer", "dispatcher", "edge"]
    assert (REPORTS_STREAM.families, COMMANDS_STREAM.families) == (("report",), ("command",))
