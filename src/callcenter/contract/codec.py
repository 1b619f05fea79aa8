"""The one codec of stream entries: fields <-> `Entry`, and the typed `Message` base.

A stream entry is `type`, `v` and `data` (a msgpack map); the registry in `types` says which
fields each type has. `encode` validates and packs (producers fail loudly at the source);
`decode` unpacks and validates, and keeps the raw `data` bytes on the Entry so a consumer that
forwards the payload (the dispatcher, to Lua) never packs it again. `Message` subclasses (the
typed reports and commands) encode and decode through the same two functions.

Reads and writes nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self, TypeVar

import msgpack

from callcenter.contract.types import TYPES, EntryType, Num, OptInt
from callcenter.logs import excerpt
from callcenter.redis import text


class DecodeError(ValueError):
    """A stream entry that does not follow the contract (goes to the dead-letter stream)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded stream entry. `id` is the stream entry id (empty before it is written); `raw` is
    the msgpack `data` as read from the stream (packed from `data` once for an Entry built by hand)."""

    type: str
    v: int
    data: dict[str, Any]
    id: str = ""
    raw: bytes = b""

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", msgpack.packb(self.data, use_bin_type=True))


# Upcasters by (type, version): turn the data of an older version into the current one. None yet.
# An entry whose version is neither the registry's nor an upcaster's is refused (DecodeError: the
# consumer dead-letters it with the reason), so a newer producer's v2 is never read as v1.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _check(value: Any, expected: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and expected in (int, Num, OptInt):
        return False  # bool is an int subclass; a flag is never a count
    return isinstance(value, expected)


def validate(type_name: str, data: Mapping[str, Any]) -> EntryType:
    """Check `data` against the contract of `type_name`; raise DecodeError if it does not hold."""
    et = TYPES.get(type_name)
    if et is None:
        raise DecodeError(f"unknown entry type {excerpt(type_name)!r}")
    for name, expected in et.required.items():
        if name not in data:
            raise DecodeError(f"{type_name}: missing field {name!r}")
        if not _check(data[name], expected):
            raise DecodeError(f"{type_name}: field {name!r} has type {type(data[name]).__name__}")
    for name, expected in et.optional.items():
        if name in data and not _check(data[name], expected):
            raise DecodeError(f"{type_name}: field {name!r} has type {type(data[name]).__name__}")
    return et


def encode(type_name: str, data: Mapping[str, Any]) -> dict[str, bytes | str | int]:
    """Stream fields for one entry; validates first so a bad producer fails loudly at the source."""
    et = validate(type_name, data)
    return {"type": type_name, "v": et.version, "data": msgpack.packb(dict(data), use_bin_type=True)}


def decode(fields: Mapping[Any, Any], entry_id: str | bytes = "") -> Entry:
    """Decode stream fields (bytes or str keys) into an Entry; raise DecodeError on any defect."""
    # as redis-py gives them (bytes keys): the three fields taken without a copy of the mapping
    btype, bv, raw = fields.get(b"type"), fields.get(b"v"), fields.get(b"data")
    if btype is None or bv is None or raw is None:
        norm = {text(k): v for k, v in fields.items()}
        btype, bv, raw = norm.get("type"), norm.get("v"), norm.get("data")
    try:
        if btype is None or bv is None or raw is None:
            raise KeyError(next(k for k, v in (("type", btype), ("v", bv), ("data", raw)) if v is None))
        type_name = text(btype)
        version = int(bv)  # int() takes bytes and str digits alike
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"entry lacks type/v/data: {excerpt(repr(exc))}") from exc
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        # by name only: the repr of some (ExtraData) holds the whole payload
        raise DecodeError(f"{type_name}: data is not msgpack: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        raise DecodeError(f"{type_name}: data is not a map")
    et = TYPES.get(type_name)
    if et is None:
        raise DecodeError(f"unknown entry type {excerpt(type_name)!r}")
    if version != et.version:
        # an older version is read through its upcaster; any other version is refused, never guessed
        upcast = UPCASTERS.get((type_name, version))
        if upcast is None:
            raise DecodeError(f"{type_name}: version {version} is not known (v{et.version} is read here)")
        data = upcast(data)
        raw = msgpack.packb(data, use_bin_type=True)  # consumers forward the current version
        version = et.version
    validate(type_name, data)
    # a newer producer may add fields (additive changes only); known ones were validated above
    return Entry(type=type_name, v=version, data=data, id=text(entry_id), raw=raw)


class Message:
    """Base of the typed reports and commands. Subclasses are frozen slotted dataclasses whose
    fields are exactly the required and optional fields of the entry type named by `TYPE`."""

    __slots__ = ()
    TYPE: ClassVar[str]

    def to_data(self) -> dict[str, Any]:
        """The `data` map; an optional field left at None is not written, as a Lua table has no nil."""
        data = {}
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            value = getattr(self, f.name)
            if value is not None:
                data[f.name] = value
        return data

    def to_fields(self) -> dict[str, bytes | str | int]:
        """Stream fields (`type`, `v`, `data`) for XADD, validated against the registry."""
        return encode(self.TYPE, self.to_data())

    @classmethod
    def from_entry(cls, entry: Entry) -> Self:
        """The typed form of a decoded entry of this type; fields a newer producer added are ignored."""
        if entry.type != cls.TYPE:
            raise DecodeError(f"{entry.type} is not {cls.TYPE}")
        return cls.from_data(entry.data)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        """An instance from a `data` map: keys that are not fields are ignored, absent ones are None
        (`to_fields()` refuses a missing required field, so a bad producer still fails at the source)."""
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})  # type: ignore[arg-type]


M = TypeVar("M", bound=Message)


def by_type(*classes: type[M]) -> dict[str, type[M]]:
    """The classes keyed by their entry type name."""
    return {c.TYPE: c for c in classes}


def typed(classes: dict[str, type[M]], entry: Entry) -> M:
    """The typed form of `entry` among `classes`; DecodeError if its type is not one of them."""
    cls = classes.get(entry.type)
    if cls is None:
        raise DecodeError(f"not one of {sorted(classes)}: {entry.type}")
    return cls.from_entry(entry)
