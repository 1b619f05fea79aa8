"""Return codes of the Lua steps and the typed result of one step.

The Lua scripts return `{rc, detail}`; `RC` names the codes (the `RC` table of the Lua library uses
the same numbers).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RC(enum.IntEnum):
    """Return codes of the Lua scripts (the `RC` table of lua/common.lua)."""

    OK = 0
    DUPLICATE = 1
    OUT_OF_ORDER = 2
    NOT_FOUND = 3
    INVALID = 4
    ALREADY = 5
    STALE = 6


@dataclass(frozen=True, slots=True)
class Result:
    rc: RC
    detail: str = ""
