"""The limits of `callcenter.contract.limits` are the ones the SQL columns enforce: a value the
edge lets into a report always fits its column."""

from __future__ import annotations

import re

from callcenter.contract import limits
from callcenter.db.models import Agent, Cdr, Flow


def _length(column: object) -> int:
    return int(column.type.length)  # type: ignore[attr-defined]


def test_sql_columns_hold_what_the_limits_allow() -> None:
    assert _length(Flow.__table__.c.id) == limits.FLOW_ID_MAX == _length(Cdr.__table__.c.flow_id)
    assert _length(Agent.__table__.c.id) == limits.AGENT_ID_MAX == _length(Cdr.__table__.c.agent_id)
    assert _length(Cdr.__table__.c.call_id) == limits.CALL_ID_MAX
    assert limits.CALLER_MAX <= _length(Cdr.__table__.c.caller)
    assert _length(Agent.__table__.c.uri) == limits.SIP_URI_MAX == _length(Flow.__table__.c.queue_uri)


def test_flow_ids() -> None:
    for good in ("support", "f" * limits.FLOW_ID_MAX, "_x", "a.b-c_d", "0800"):
        assert limits.is_flow_id(good), good
    for bad in ("", ".", "..", ".hidden", "-opt", "f" * (limits.FLOW_ID_MAX + 1), "sup port", "a;b=1", "a:b",
                "caf\u00e9", "x\n"):
        assert not limits.is_flow_id(bad), bad
    assert re.match(limits.FLOW_ID_PATTERN, "support")


def test_printable() -> None:
    assert limits.is_printable("Ann Caller", 10)
    assert not limits.is_printable("Ann Caller", 9)
    assert not limits.is_printable("Ann Caller", 20, spaces=False)
    for control in ("a\rb", "a\nb", "a\x00", "a\x7f", "a\x85"):
        assert not limits.is_printable(control, 20)
