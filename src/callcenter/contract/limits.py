"""Limits of the values that enter reports, Redis keys and SQL columns: one place for all of them.

Reads and writes nothing. The SQL columns (`callcenter.db.models`), the api's id patterns and the
sip-edge's checks of SIP-derived fields use these numbers, so that a value the edge lets into a
report always fits where it ends up (a CDR column PostgreSQL would refuse is a dead letter, and a
dead letter anyone can cause floods the dead-letter stream). tests/unit/test_limits.py checks the
SQL columns against them.
"""

from __future__ import annotations

import re

FLOW_ID_MAX = 64          # flows.id, cdrs.flow_id
AGENT_ID_MAX = 128        # agents.id, cdrs.agent_id
CALL_ID_MAX = 128         # cdrs.call_id (the edge's call ids are 32 hex digits)
# the user part of the caller's From (cdrs.caller holds 255): short enough that a From URI
# with this user still fits SIP_URI_MAX
CALLER_MAX = 128
SIP_URI_MAX = 255         # stored SIP URIs: flows' media URIs, agents' URIs, the caller's From URI
DISPLAY_NAME_MAX = 128    # the caller's display name, passed on to agents
SIP_CALL_ID_MAX = 255     # the caller's SIP Call-ID (kept in the call hash)
SOURCE_MAX = 64           # "host:port" of the datagram's source ("[v6]:port" is at most 47 + 6)
# the Request-URI of an INVITE as a whole (it is not stored; longer ones get 414 at the edge)
REQUEST_URI_MAX = 512


def id_pattern(max_length: int) -> str:
    """The pattern of flow, agent and call ids of at most `max_length` characters: letters, digits,
    `_`, `.`, `-`, not starting with `.` or `-` (ids appear in Redis keys and URL paths)."""
    return rf"^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{max_length - 1}}}$"


FLOW_ID_PATTERN = id_pattern(FLOW_ID_MAX)
AGENT_ID_PATTERN = id_pattern(AGENT_ID_MAX)

_FLOW_ID = re.compile(FLOW_ID_PATTERN)
# C0 controls, DEL and the C1 block: never part of a name, a URI or a Call-ID
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_flow_id(value: str) -> bool:
    return _FLOW_ID.fullmatch(value) is not None   # fullmatch: "$" alone lets a final "\n" through


def is_printable(value: str, max_length: int, *, spaces: bool = True) -> bool:
    """At most `max_length` characters, no control character (and no space if `spaces` is false)."""
    if len(value) > max_length or _CONTROL.search(value) is not None:
        return False
    return spaces or (" " not in value)
