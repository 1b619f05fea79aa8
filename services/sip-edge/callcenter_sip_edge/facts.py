"""What the SIP side tells the service about a call: one `Fact` per thing that happened.

Reads: nothing. Writes: nothing (a plain frozen record). The SIP side (`router`, `call` and the
rooms beside it) makes facts; `sip_stack` hands them to the asyncio side, and `service` turns them
into reports. Its own module so that the call logic and the thread bridge do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fact:
    """Something that happened to a call, reported to the dispatcher."""

    kind: str              # its report type without `report.`: call_arrived, media_answered,
                           # media_ended, media_failed, agent_answered, agent_failed, call_ended
    call_id: str           # edge-generated id (uuid4 hex), not the SIP Call-ID
    data: dict[str, Any]   # plain data only (str/int/float/bool/None)
    ts_ms: int             # wall clock ms when it happened


FactSink = Callable[[Fact], None]

# The kind of a fact that is no report: a call's confirmed legs (`confirmed.checkpoint`), which the
# service stores in Redis (`checkpoint.py`) for a restarted edge to adopt the call.
CHECKPOINT_KIND = "checkpoint"
