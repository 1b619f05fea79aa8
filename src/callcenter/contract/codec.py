"""The one codec of typed stream entries: a `Message` subclass is one entry type of the registry.

Reads and writes nothing itself; `to_fields()` gives the stream fields a producer XADDs and
`from_entry()` turns a decoded `Entry` back into its class.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar, Self, TypeVar

from callcenter.events import DecodeError, Entry, encode


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
        data = entry.data
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
