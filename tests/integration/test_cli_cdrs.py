"""`callcenter cdr list` as a subprocess against the api as a real process: the api's CDR filters
from the shell, attempt rows included (`--kind final|attempt|all`), flow, agent, date range, one
call, order, and a `--limit` larger than one page (the cursor is followed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_client import ApiProcess, api_process
from sqlalchemy import insert
from test_cli import cc, js

from callcenter.db.engine import make_engine
from callcenter.db.models import Cdr
from callcenter_dev.servers import RedisServer

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CALLS = 260  # more than one page of the cli (200 rows a request)


def final(i: int) -> dict[str, Any]:
    return {"call_id": f"c{i:04d}", "attempt": 0, "flow_id": "sales" if i % 2 else "support",
            "caller": f"caller{i}", "agent_id": f"a{i % 3}", "received_at": T0 + timedelta(minutes=i),
            "wait_ms": 1000, "pickup_ms": 500, "talk_ms": 60_000, "outcome": "answered", "ended_by": "caller",
            "reason": "bye", "rejections": 1 if i % 10 == 0 else 0, "event_id": f"{i}-1", "call_type": 0,
            "fstats": 7}


def attempt(i: int) -> dict[str, Any]:
    """Every tenth call first rang agent `x9`, who rejected it (4 s of ringing)."""
    return {**final(i), "attempt": 1, "agent_id": "x9", "pickup_ms": 4000, "talk_ms": 0, "outcome": "not_connected",
            "ended_by": "agent", "reason": "rejected", "rejections": 0, "event_id": f"{i}-0", "call_type": -2,
            "fstats": 3}


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    with api_process(redis_server, tmp_path_factory.mktemp("cli-cdrs"), {"CC_TENANT": "clicdrs"}) as running:
        engine = make_engine(f"sqlite:///{running.db}")  # migrated by the api at its start
        with engine.begin() as conn:
            conn.execute(insert(Cdr), [final(i) for i in range(CALLS)] + [attempt(i) for i in range(0, CALLS, 10)])
        engine.dispose()
        yield running


def call_ids(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["call_id"], r["attempt"]) for r in rows]


def test_kinds(api: ApiProcess) -> None:
    attempts = js(api, "cdr", "list", "--kind", "attempt", "--limit", "1000")
    assert call_ids(attempts) == [(f"c{i:04d}", 1) for i in reversed(range(0, CALLS, 10))]
    assert {(r["agent_id"], r["outcome"], r["reason"], r["pickup_ms"], r["call_type"]) for r in attempts} == {
        ("x9", "not_connected", "rejected", 4000, -2)}
    finals = js(api, "cdr", "list", "--kind", "final", "--limit", "1000")
    assert len(finals) == CALLS and {r["attempt"] for r in finals} == {0}
    both = js(api, "cdr", "list", "--kind", "all", "--limit", "1000")
    assert len(both) == CALLS + CALLS // 10
    assert len(js(api, "cdr", "list", "--limit", "1000")) == len(both)  # all by default


def test_filters_and_range(api: ApiProcess) -> None:
    rows = js(api, "cdr", "list", "--flow", "support", "--agent", "x9", "--since", "2026-03-01T12:00:00",
              "--until", "2026-03-01T13:00:00", "--order", "asc")
    # even calls are support's; the attempts are of calls 0, 10, ...; 60 minutes: calls 0..59
    assert call_ids(rows) == [(f"c{i:04d}", 1) for i in range(0, 60, 10)]
    one = js(api, "cdr", "list", "--call", "c0020", "--order", "asc")
    assert [(r["attempt"], r["agent_id"]) for r in one] == [(0, "a2"), (1, "x9")]
    assert js(api, "cdr", "list", "--outcome", "not_connected", "--media", "chat") == []


def test_limit_follows_the_pages(api: ApiProcess) -> None:
    rows = js(api, "cdr", "list", "--kind", "final", "--limit", "250")
    assert call_ids(rows) == [(f"c{i:04d}", 0) for i in reversed(range(CALLS - 250, CALLS))]


def test_table_for_people_and_a_refused_filter(api: ApiProcess) -> None:
    lines = cc(api, "cdr", "list", "--call", "c0010").stdout.splitlines()
    assert lines[0].split() == ["CALL_ID", "ATTEMPT", "FLOW", "AGENT", "OUTCOME", "REASON", "RECEIVED_AT",
                                "WAIT_MS", "PICKUP_MS", "TALK_MS"]
    assert [line.split()[:6] for line in lines[1:]] == [["c0010", "1", "support", "x9", "not_connected", "rejected"],
                                                        ["c0010", "0", "support", "a1", "answered", "bye"]]
    bad = cc(api, "cdr", "list", "--since", "yesterday", ok=False)
    assert bad.returncode == 1 and "422" in bad.stderr
    usage = cc(api, "cdr", "list", "--kind", "some", ok=False)
    assert usage.returncode == 2 and "--kind" in usage.stderr
