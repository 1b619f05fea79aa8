"""Writes the golden example of every entry type: `<type>.json` (the data) and `<type>.msgpack`
(the exact bytes of the stream entry's `data` field). Run it only when a type is added; existing
files are never rewritten, so a codec change that breaks old entries fails tests/unit/test_events.py.

    .venv/bin/python docs/events/make_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack

from callcenter.contract.codec import validate
from callcenter.contract.types import TYPES

HERE = Path(__file__).parent / "golden"
TS = 1_764_000_000_000
R = {"call_id": "7f3c2a9e0b6d4e1f8a2b3c4d5e6f7081", "edge": "edge-0", "ts": TS}
C = {"call_id": R["call_id"]}

EXAMPLES: dict[str, dict[str, object]] = {
    "report.call_arrived": {**R, "seq": 1, "flow": "support", "caller": "alice", "caller_uri": "sip:alice@192.0.2.10",
                            "caller_display": "Alice", "sip_call_id": "a84b4c76e66710@192.0.2.10",
                            "source": "192.0.2.10:5060"},
    "report.media_answered": {**R, "seq": 2, "purpose": "welcome", "uri": "sip:welcome@media.example.net"},
    "report.media_ended": {**R, "seq": 3, "purpose": "welcome"},
    "report.media_failed": {**R, "seq": 3, "purpose": "queue", "reason": "rejected", "code": 503},
    "report.agent_answered": {**R, "seq": 5, "offer_id": "1", "agent_id": "1001"},
    "report.agent_failed": {**R, "seq": 5, "offer_id": "1", "agent_id": "1001", "reason": "busy", "code": 486},
    "report.call_ended": {**R, "seq": 6, "by": "caller", "reason": "bye", "code": None},
    "report.command_refused": {**R, "seq": 4, "command": "command.ring", "offer_id": "2", "reason": "wrong_state"},
    "command.media": {**C, "uri": "sip:queue@media.example.net;cc_pos=2", "purpose": "queue"},
    "command.ring": {**C, "offer_id": "1", "agent_id": "1001", "uri": "sip:1001@192.0.2.40", "timeout_s": 20,
                     "caller_display": "Alice"},
    "command.ring_all": {**C, "offer_id": "1", "targets": [{"agent_id": "1001", "uri": "sip:1001@192.0.2.40"},
                                                           {"agent_id": "1002", "uri": "sip:1002@192.0.2.41"}],
                         "timeout_s": 20, "caller_display": "Alice"},
    "command.cancel_ring": {**C, "offer_id": "1"},
    "command.reject": {**C, "code": 480, "reason": "No Agents Available"},
    "command.hangup": {**C, "reason": "edge_lost"},
    "command.adopt": {**C, "from_edge": "edge-1"},
    "call.arrived": {**C, "ts": TS, "flow": "support", "caller": "alice", "edge": "edge-0",
                     "sip_call_id": "a84b4c76e66710@192.0.2.10"},
    "call.rejected": {**C, "ts": TS, "flow": "support", "code": 480, "reason": "no_agents"},
    "call.welcome_ended": {**C, "ts": TS, "flow": "support"},
    "call.queued": {**C, "ts": TS, "flow": "support", "position": 2},
    "call.offered": {**C, "ts": TS, "flow": "support", "agent_id": "1001", "offer_id": "1"},
    "call.agent_failed": {**C, "ts": TS, "flow": "support", "agent_id": "1001", "offer_id": "1", "reason": "no_answer",
                          "attempt": 1, "ring_ms": 20000, "caller": "alice", "received_ms": TS - 45000,
                          "wait_ms": 45000, "rejections": 0, "media_type": "audio",
                          "sip_call_id": "a84b4c76e66710@192.0.2.10", "edge": "edge-0", "priority": 0,
                          "queue_position": 2},
    "call.connected": {**C, "ts": TS, "flow": "support", "agent_id": "1001", "wait_ms": 42000},
    "call.abandoned": {**C, "ts": TS, "flow": "support", "wait_ms": 61000, "stage": "queued"},
    "call.dissuaded": {**C, "ts": TS, "flow": "support", "rule": "queue_size"},
    "call.overflowed": {**C, "ts": TS, "flow": "support", "to_flow": "support-overflow"},
    "call.ended": {**C, "ts": TS, "flow": "support", "caller": "alice", "outcome": "answered", "ended_by": "caller",
                   "reason": "bye", "received_ms": TS - 300000, "wait_ms": 42000, "pickup_ms": 4000,
                   "talk_ms": 254000, "rejections": 1, "agent_id": "1002", "media_type": "audio",
                   "sip_call_id": "a84b4c76e66710@192.0.2.10", "edge": "edge-0", "priority": 0,
                   "queue_position": 2, "attempts": 1, "offers": 2, "hold_ms": 38000},
    "agent.logged_in": {"ts": TS, "agent_id": "1001"},
    "agent.logged_out": {"ts": TS, "agent_id": "1001"},
    "agent.paused": {"ts": TS, "agent_id": "1001", "reason": "lunch"},
    "agent.unpaused": {"ts": TS, "agent_id": "1001"},
    "agent.released": {"ts": TS, "agent_id": "1001", "reason": "no_live_call", "from": "in_call",
                       "call_id": R["call_id"]},
    "agent.state_changed": {"ts": TS, "agent_id": "1001", "from": "free", "to": "ringing", "call_id": R["call_id"]},
    "stream.capped": {"ts": TS, "stream": "events", "length": 5_000_400, "cap": 5_000_000, "trimmed": 400},
}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name in TYPES:
        data = EXAMPLES[name]
        validate(name, data)
        js, mp = HERE / f"{name}.json", HERE / f"{name}.msgpack"
        if js.exists() and mp.exists():
            continue
        js.write_text(json.dumps({"type": name, "v": TYPES[name].version, "data": data}, indent=2) + "\n")
        mp.write_bytes(msgpack.packb(data, use_bin_type=True))
        print("wrote", js.name, mp.name)


if __name__ == "__main__":
    main()
