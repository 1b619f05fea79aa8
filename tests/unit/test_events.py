"""The event contract: golden examples decode, bad entries are refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from callcenter.contract.codec import UPCASTERS, DecodeError, Entry, decode, encode
from callcenter.contract.types import TYPES, lua_version_table

GOLDEN = Path(__file__).resolve().parents[2] / "docs" / "events" / "golden"


@pytest.mark.parametrize("type_name", sorted(TYPES))
def test_golden_example_decodes(type_name: str) -> None:
    expected = json.loads((GOLDEN / f"{type_name}.json").read_text())
    raw = (GOLDEN / f"{type_name}.msgpack").read_bytes()
    entry = decode({b"type": type_name.encode(), b"v": str(expected["v"]).encode(), b"data": raw}, "1-0")
    assert entry.type == type_name and entry.v == TYPES[type_name].version
    assert entry.data == expected["data"]


def test_every_golden_file_names_a_known_type() -> None:
    names = {p.name.rsplit(".", 1)[0] for p in GOLDEN.iterdir() if p.suffix in (".json", ".msgpack")}
    assert names == set(TYPES)


def test_encode_decode_round_trip_and_additive_fields() -> None:
    data = {"ts": 1, "agent_id": "7", "from": "free", "to": "ringing", "future_field": [1, 2]}
    entry = decode(encode("agent.state_changed", data))
    assert entry.data == data  # unknown fields from a newer producer pass through


@pytest.mark.parametrize(("fields", "message"), [
    ({b"v": b"1", b"data": msgpack.packb({})}, "lacks type"),
    ({b"type": b"call.nope", b"v": b"1", b"data": msgpack.packb({})}, "unknown entry type"),
    ({b"type": b"call.queued", b"v": b"1", b"data": b"\xc1\xc1"}, "not msgpack"),
    ({b"type": b"call.queued", b"v": b"1", b"data": msgpack.packb([1, 2])}, "not a map"),
    ({b"type": b"call.queued", b"v": b"1", b"data": msgpack.packb({"ts": 1, "call_id": "c", "flow": "f"})},
     "missing field 'position'"),
    ({b"type": b"call.queued", b"v": b"1",
      b"data": msgpack.packb({"ts": 1, "call_id": "c", "flow": "f", "position": "3"})}, "field 'position'"),
    ({b"type": b"call.queued", b"v": b"x", b"data": msgpack.packb({})}, "lacks type"),
])
def test_bad_entries_are_refused(fields: dict[bytes, bytes], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(fields)


def test_encode_refuses_a_bad_producer() -> None:
    with pytest.raises(DecodeError):
        encode("command.reject", {"call_id": "c", "code": "480", "reason": "x"})


def test_lua_version_table_lists_every_type() -> None:
    table = lua_version_table()
    for name, et in TYPES.items():
        assert f'["{name}"]={et.version}' in table


def test_every_public_event_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    for name in TYPES:
        if name.startswith(("call.", "agent.")):
            assert f"| `{name}` | {TYPES[name].version} |" in doc, f"{name} is missing from docs/events.md"


def test_decode_keeps_the_raw_data_bytes() -> None:
    fields = encode("command.hangup", {"call_id": "c", "reason": "x"})
    entry = decode({k.encode(): v for k, v in fields.items()}, b"1-0")
    assert entry.raw == fields["data"] and entry.id == "1-0"  # forwarded as read, never packed again


def test_an_entry_built_by_hand_gets_its_raw_bytes_from_its_data() -> None:
    entry = Entry(type="command.hangup", v=1, data={"call_id": "c", "reason": "x"})
    assert msgpack.unpackb(entry.raw) == entry.data


@pytest.mark.parametrize("version", [b"0", b"2", b"99", b"-1"])
def test_a_version_the_registry_does_not_know_is_refused(version: bytes) -> None:
    """Not taken as v1 (issue 10 item 10): the consumer dead-letters it with this reason."""
    data = msgpack.packb({"ts": 1, "call_id": "c", "flow": "f", "position": 3})
    with pytest.raises(DecodeError, match=r"call\.queued: version .* not known"):
        decode({b"type": b"call.queued", b"v": version, b"data": data})
    assert decode({b"type": b"call.queued", b"v": b"1", b"data": data}).v == 1


def test_an_older_version_with_an_upcaster_is_taken_as_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    old = msgpack.packb({"ts": 1, "call_id": "c", "flow": "f", "pos": 3})
    monkeypatch.setitem(UPCASTERS, ("call.queued", 0),
                        lambda d: {**{k: v for k, v in d.items() if k != "pos"}, "position": d["pos"]})
    entry = decode({b"type": b"call.queued", b"v": b"0", b"data": old})
    assert entry.v == TYPES["call.queued"].version and entry.data["position"] == 3
    assert msgpack.unpackb(entry.raw) == entry.data
