"""Typed reports: sip-edge -> dispatcher, stream `cc:{t}:reports`.

One frozen dataclass per `report.*` entry type; its fields are exactly the type's fields in the
registry (optional ones default to None). Every report carries the owning `edge`, the per-call
sequence number `seq` (1 = arrival) and the wall-clock `ts` in ms. The edge builds them from the
SIP stack's facts; the dispatcher hands their raw `data` bytes to the Lua step of their type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from callcenter.contract.codec import Entry, Message, by_type, typed


@dataclass(frozen=True, slots=True)
class Report(Message):
    """Base of every report: the fields all of them carry (first, in this order)."""

    call_id: str
    edge: str
    seq: int
    ts: int


@dataclass(frozen=True, slots=True)
class CallArrived(Report):
    """An INVITE arrived for a flow; media_type = audio (default) or chat."""

    TYPE: ClassVar[str] = "report.call_arrived"
    flow: str
    caller: str
    caller_uri: str
    sip_call_id: str
    source: str
    caller_display: str | None = None
    priority: int | None = None
    media_type: str | None = None


@dataclass(frozen=True, slots=True)
class MediaAnswered(Report):
    """The caller is bridged to a media server."""

    TYPE: ClassVar[str] = "report.media_answered"
    purpose: str
    uri: str


@dataclass(frozen=True, slots=True)
class MediaEnded(Report):
    """The media server hung up its leg; the caller stays."""

    TYPE: ClassVar[str] = "report.media_ended"
    purpose: str


@dataclass(frozen=True, slots=True)
class MediaFailed(Report):
    """The media leg could not be set up."""

    TYPE: ClassVar[str] = "report.media_failed"
    purpose: str
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class AgentAnswered(Report):
    """The agent answered and the caller is connected to it."""

    TYPE: ClassVar[str] = "report.agent_answered"
    offer_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentFailed(Report):
    """The agent leg failed (rejected, busy, no_answer, unreachable, no_sdp, cancelled, hung_up)."""

    TYPE: ClassVar[str] = "report.agent_failed"
    offer_id: str
    agent_id: str
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class CallEnded(Report):
    """Every leg of the call is down; by = caller, agent, media or edge."""

    TYPE: ClassVar[str] = "report.call_ended"
    by: str
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class CommandRefused(Report):
    """A command the edge did not carry out, and why; seq 0 = outside the call's report stream."""

    TYPE: ClassVar[str] = "report.command_refused"
    command: str
    reason: str
    offer_id: str | None = None
    purpose: str | None = None


REPORTS: dict[str, type[Report]] = by_type(CallArrived, MediaAnswered, MediaEnded, MediaFailed,
                                           AgentAnswered, AgentFailed, CallEnded, CommandRefused)


def report_of(entry: Entry) -> Report:
    """The typed report of a decoded entry; DecodeError if the entry is not a report."""
    return typed(REPORTS, entry)
