"""The entry-type registry: every entry type of every stream, defined once, versioned.

A stream entry has three fields: `type` (e.g. `call.queued`), `v` (the schema version of that
type) and `data` (a msgpack map, see `codec`). Changes within a version are additive only: a
consumer ignores fields it does not know, and a producer never removes or retypes a field without
a new version.

Three families share the codec:

- reports  (`report.*`)  sip-edge -> dispatcher, stream `cc:{t}:reports`. Facts about one call's
  SIP dialogs; each carries the owning edge and a per-call sequence number `seq` (1 = arrival) so
  the dispatcher applies them in order and exactly once. Typed in `reports`.
- commands (`command.*`) dispatcher/api -> one sip-edge, stream `cc:{t}:commands:<edge>`. Typed
  in `commands`.
- events   (`call.*`, `agent.*`, `stream.*`) stream `cc:{t}:events`: every state change, for the cdr-writer
  and for analytics consumers (docs/events.md). Most are written by the Lua scripts, which get
  the version table from `lua_version_table()`.

Reads and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class EntryType:
    """One entry type: its name, schema version, required and optional fields (name -> Python type)."""

    name: str
    version: int
    required: Mapping[str, type | tuple[type, ...]]
    optional: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    doc: str = ""


Int = int
Num = (int, float)
Str = str
OptStr = (str, type(None))
OptInt = (int, type(None))

_CALL = {"call_id": Str}
_REPORT = {"call_id": Str, "edge": Str, "seq": Int, "ts": Int}
_EVENT = {"ts": Int}
# what a CDR row needs beyond the event's own facts (optional: events before issue 12 lack them)
_CDR = {"caller": OptStr, "received_ms": OptInt, "wait_ms": OptInt, "rejections": OptInt, "media_type": OptStr,
        "sip_call_id": OptStr, "edge": OptStr, "priority": OptInt, "queue_position": OptInt}

_TYPES: list[EntryType] = [
    # -- reports: sip-edge -> dispatcher -------------------------------------------------------
    EntryType("report.call_arrived", 1,
              {**_REPORT, "flow": Str, "caller": Str, "caller_uri": Str, "sip_call_id": Str, "source": Str},
              {"caller_display": OptStr, "priority": OptInt, "media_type": OptStr},
              "An INVITE arrived for a flow; the caller is not answered yet. media_type = audio (the "
              "default, also for an INVITE without SDP) or chat (the first media stream is MSRP)."),
    EntryType("report.media_answered", 1, {**_REPORT, "purpose": Str, "uri": Str}, {},
              "The caller is bridged to a media server (welcome, queue or dissuading) and is on it: sent "
              "once the caller's ACK confirmed our 200 (or it answered our re-INVITE)."),
    EntryType("report.media_ended", 1, {**_REPORT, "purpose": Str}, {},
              "The media server hung up its leg (e.g. the welcome message finished); the caller stays."),
    EntryType("report.media_failed", 1, {**_REPORT, "purpose": Str, "reason": Str}, {"code": OptInt},
              "The media leg could not be set up."),
    EntryType("report.agent_answered", 1, {**_REPORT, "offer_id": Str, "agent_id": Str}, {},
              "The agent answered and the caller is connected to it (an agent that answered the caller "
              "itself: once the caller ACKed)."),
    EntryType("report.agent_failed", 1, {**_REPORT, "offer_id": Str, "agent_id": Str, "reason": Str},
              {"code": OptInt},
              "The agent leg failed: rejected, busy, no_answer, unreachable, no_sdp, cancelled, or hung_up "
              "(the agent answered and hung up before being connected, e.g. during the flow-id message)."),
    EntryType("report.call_ended", 1, {**_REPORT, "by": Str, "reason": Str}, {"code": OptInt},
              "Every leg of the call is down; by = caller, agent, media or edge. The edge ends a caller "
              "that fails its part of the connect with reason caller_no_ack (no ACK of our 200) or "
              "caller_reinvite_timeout (no answer to the re-INVITE moving it to the agent)."),
    EntryType("report.command_refused", 1, {**_REPORT, "command": Str, "reason": Str},
              {"offer_id": OptStr, "purpose": OptStr},
              "A command the edge did not carry out (every other command's outcome is one of the reports "
              "above): command = its type (command.ring, ...), offer_id = its offer (ring, ring_all, "
              "cancel_ring), purpose = its purpose (media), reason = wrong_state (the call is busy with "
              "another leg), unknown_call (the edge has no such call: ended, or never known), bad_purpose, "
              "no_targets, invalid (undecodable) or internal_error. seq = 0 when the edge has no report "
              "stream for the call (unknown_call): the dispatcher applies it without the sequence check."),
    # -- commands: -> one sip-edge ---------------------------------------------------------------
    EntryType("command.media", 1, {**_CALL, "uri": Str, "purpose": Str}, {},
              "Bridge the caller to a media URI (the queue URI carries the position parameter)."),
    EntryType("command.ring", 1,
              {**_CALL, "offer_id": Str, "agent_id": Str, "uri": Str, "timeout_s": Num},
              {"caller_display": OptStr, "whisper_uri": OptStr},
              "Ring an agent; connect caller and agent when it answers. With whisper_uri (the flow-id "
              "message) the answered agent first hears that media while the caller stays on the queue "
              "media; the caller is connected when the message ends."),
    EntryType("command.ring_all", 1,
              {**_CALL, "offer_id": Str, "targets": list, "timeout_s": Num}, {"caller_display": OptStr},
              "Ring several agents at once (targets: [{agent_id, uri}]); the first to answer is connected, "
              "the others get CANCEL."),
    EntryType("command.cancel_ring", 1, {**_CALL, "offer_id": Str}, {}, "Stop ringing an agent."),
    EntryType("command.reject", 1, {**_CALL, "code": Int, "reason": Str}, {},
              "Reject the call with a SIP final response (or BYE if already answered)."),
    EntryType("command.hangup", 1, {**_CALL, "reason": Str}, {}, "Tear the call down."),
    EntryType("command.adopt", 1, {**_CALL, "from_edge": Str}, {},
              "Take over a call of a lost edge of the same address group (edge_lost handed it to this edge): "
              "load its checkpoint, carry a talking call on, end any other (call_ended by edge, reason "
              "edge_lost)."),
    # -- events: the product stream ------------------------------------------------------------
    EntryType("call.arrived", 1, {**_EVENT, **_CALL, "flow": Str, "caller": Str, "edge": Str},
              {"media_type": OptStr, "sip_call_id": OptStr},
              "media_type = audio or chat; sip_call_id = the caller's SIP Call-ID."),
    EntryType("call.rejected", 1, {**_EVENT, **_CALL, "flow": Str, "code": Int, "reason": Str}, {},
              "Refused at arrival (unknown flow, no agent logged in)."),
    EntryType("call.welcome_ended", 1, {**_EVENT, **_CALL, "flow": Str}),
    EntryType("call.queued", 1, {**_EVENT, **_CALL, "flow": Str, "position": Int}, {},
              "position = number of calls ahead in the flow's queue (0 = next)."),
    EntryType("call.offered", 1, {**_EVENT, **_CALL, "flow": Str, "agent_id": Str, "offer_id": Str}),
    EntryType("call.agent_failed", 1,
              {**_EVENT, **_CALL, "flow": Str, "agent_id": Str, "offer_id": Str, "reason": Str},
              {"attempt": OptInt, "ring_ms": OptInt, **_CDR},
              "An attempt that did not connect (one CDR row): attempt = its number in the call (1, 2, ...), "
              "ring_ms = how long the agent rang, rejections = the call's rejections before this one."),
    EntryType("call.connected", 1, {**_EVENT, **_CALL, "flow": Str, "agent_id": Str, "wait_ms": Int}),
    EntryType("call.abandoned", 1, {**_EVENT, **_CALL, "flow": Str, "wait_ms": Int, "stage": Str}),
    EntryType("call.dissuaded", 1, {**_EVENT, **_CALL, "flow": Str, "rule": Str}, {},
              "Sent to the flow's dissuading media; rule = queue_size, ewt or on_hold."),
    EntryType("call.overflowed", 1, {**_EVENT, **_CALL, "flow": Str}, {"to_flow": OptStr, "to_uri": OptStr},
              "The call waited longer than the flow's max_wait_s: moved to another flow or a SIP URI."),
    EntryType("call.ended", 1,
              {**_EVENT, **_CALL, "flow": Str, "caller": Str, "outcome": Str, "ended_by": Str,
               "reason": Str, "received_ms": Int, "wait_ms": Int, "pickup_ms": Int, "talk_ms": Int,
               "rejections": Int},
              {"agent_id": OptStr, **_CDR, "attempts": OptInt, "offers": OptInt, "hold_ms": OptInt,
               "dissuaded_rule": OptStr, "overflow_to_flow": OptStr, "overflow_to_uri": OptStr},
              "The call's summary (one CDR). outcome = answered, abandoned, rejected, failed, dissuaded "
              "or overflowed."),
    EntryType("stream.capped", 1, {**_EVENT, "stream": Str, "length": Int, "cap": Int, "trimmed": Int}, {},
              "The retention fuse blew: a consumer group is so far behind that `stream` (its key after the "
              "tenant prefix) reached `length` entries, over its cap (`events_maxlen`, `commands_maxlen` or "
              "`reports_maxlen`); the oldest `trimmed` entries, unread by that group, are removed next."),
    EntryType("agent.logged_in", 1, {**_EVENT, "agent_id": Str}),
    EntryType("agent.logged_out", 1, {**_EVENT, "agent_id": Str}),
    EntryType("agent.paused", 1, {**_EVENT, "agent_id": Str, "reason": Str}, {},
              "reason: the caller's code, or no-answer after too many missed offers in a row."),
    EntryType("agent.unpaused", 1, {**_EVENT, "agent_id": Str}),
    EntryType("agent.released", 1, {**_EVENT, "agent_id": Str, "reason": Str, "from": Str}, {"call_id": OptStr},
              "Freed by the reconciler (no_live_call) or by an administrator (forced)."),
    EntryType("agent.state_changed", 1, {**_EVENT, "agent_id": Str, "from": Str, "to": Str},
              {"call_id": OptStr, "chats": OptInt},
              "state: logged_out, free, ringing, in_call, in_chat, wrap_up, paused. chats = the agent's "
              "chat sessions (offered or connected) after the change, for in_chat."),
]

TYPES: dict[str, EntryType] = {t.name: t for t in _TYPES}


def lua_version_table() -> str:
    """Lua source of the `EVENT_V` table: the Lua scripts stamp `v` from the same registry."""
    rows = ", ".join(f'["{t.name}"]={t.version}' for t in _TYPES)
    return f"local EVENT_V = {{{rows}}}\n"
