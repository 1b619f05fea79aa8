"""Return codes of the Lua steps, the typed result of one step, and the refusal raised from it.

The Lua scripts return `{rc, detail}`; `RC` names the codes (the `RC` table of the Lua prelude is
generated from it by `store.prelude`). A caller that cannot go on after some codes raises `StepRefused` through
`refuse_on`; the api turns it into an HTTP status in one place (`callcenter_api.errors`).
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
    FAILED = 7  # the step could not be applied (detail: why); see lua/README.md "When a step fails"


NOT_OK = tuple(rc for rc in RC if rc is not RC.OK)  # for a caller that goes on only after OK


@dataclass(frozen=True, slots=True)
class Result:
    """The return code of one Lua step and its detail (a state, a count or a reason)."""

    rc: RC
    detail: str = ""


class StepRefused(Exception):
    """A step came back with a code its caller cannot go on with; `message` says so to a person."""

    def __init__(self, rc: RC, detail: str = "", message: str = "") -> None:
        super().__init__(message or f"{rc.name}: {detail}")
        self.rc = rc
        self.detail = detail
        self.message = str(self.args[0])


def refuse_on(res: Result, *codes: RC, message: str) -> Result:
    """`res` itself, unless its code is one of `codes`: then StepRefused with `message`."""
    if res.rc in codes:
        raise StepRefused(res.rc, res.detail, message)
    return res
