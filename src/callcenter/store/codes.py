"""Return codes of the Lua steps and the typed result of one step.

The Lua scripts return `{rc, detail}`; `RC` names the codes, and the `RC` table of the Lua prelude
is generated from it (`store.prelude`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RC(enum.IntEnum):
    """Return codes of the Lua scripts (rendered into the Lua prelude as `RC`)."""

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
