"""Typed commands: dispatcher/api -> one sip-edge, stream `cc:{t}:commands:<edge>`.

One frozen dataclass per `command.*` entry type; its fields are exactly the type's fields in the
registry (optional ones default to None). The Lua steps write most commands; the edge decodes
each entry once with `command_of()` and hands the object to the SIP side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from callcenter.contract.codec import Entry, Message, by_type, typed


@dataclass(frozen=True, slots=True)
class Command(Message):
    """Base of every command; `call_id` is the edge's call the command is for."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Media(Command):
    """Bridge the caller to a media URI (welcome, queue or dissuading)."""

    TYPE: ClassVar[str] = "command.media"
    uri: str
    purpose: str


@dataclass(frozen=True, slots=True)
class Ring(Command):
    """Ring one agent; with `whisper_uri` the agent hears the flow-id message before the caller."""

    TYPE: ClassVar[str] = "command.ring"
    offer_id: str
    agent_id: str
    uri: str
    timeout_s: float
    caller_display: str | None = None
    whisper_uri: str | None = None


@dataclass(frozen=True, slots=True)
class RingAll(Command):
    """Ring several agents at once (targets: [{agent_id, uri}]); the first to answer is connected."""

    TYPE: ClassVar[str] = "command.ring_all"
    offer_id: str
    targets: list[dict[str, Any]]
    timeout_s: float
    caller_display: str | None = None


@dataclass(frozen=True, slots=True)
class CancelRing(Command):
    """Stop ringing an agent."""

    TYPE: ClassVar[str] = "command.cancel_ring"
    offer_id: str


@dataclass(frozen=True, slots=True)
class Reject(Command):
    """Reject the call with a SIP final response (or BYE if already answered)."""

    TYPE: ClassVar[str] = "command.reject"
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Hangup(Command):
    """Tear the call down."""

    TYPE: ClassVar[str] = "command.hangup"
    reason: str


@dataclass(frozen=True, slots=True)
class Adopt(Command):
    """Take over a call of a lost edge of the same address group (its checkpoint is now this edge's)."""

    TYPE: ClassVar[str] = "command.adopt"
    from_edge: str


COMMANDS: dict[str, type[Command]] = by_type(Media, Ring, RingAll, CancelRing, Reject, Hangup, Adopt)


def command_of(entry: Entry) -> Command:
    """The typed command of a decoded entry; DecodeError if the entry is not a command."""
    return typed(COMMANDS, entry)
