"""The hand-written migrations match the models, on SQLite, PostgreSQL and MariaDB, and upgrade is idempotent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from callcenter.db.engine import alembic_config, make_engine, upgrade
from callcenter.db.models import Base


def differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_schema_matches_models_and_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schema.sqlite3'}"
    upgrade(url)
    upgrade(url)
    assert differences(url) == []
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    engine.dispose()


def test_schema_matches_models(sql_url: str) -> None:
    upgrade(sql_url)
    upgrade(sql_url)  # every start migrates: the second run is a no-op
    assert differences(sql_url) == []


CDR_INSERT = ("INSERT INTO cdrs (call_id, flow_id, caller, received_at, wait_ms, pickup_ms, talk_ms, outcome, "
              "ended_by, reason, rejections, event_id) VALUES (:call_id, 'f', 'x', '2024-01-01 00:00:00', :wait, "
              "0, 0, :outcome, 'caller', '', 0, '1-0')")


def downgrade(engine: Engine, revision: str) -> None:
    with engine.connect() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        conn.commit()


def check_routing_migration(url: str) -> None:
    """0001 with data, then 0002: the flows get the routing defaults, CDRs accept the new outcomes and
    still refuse unknown ones and negative times; down to 0001 and up again works."""
    upgrade(url, "0001")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO flows (id, skill, queue_uri) VALUES ('f', 's', 'sip:q@h')"))
            conn.execute(text(CDR_INSERT), {"call_id": "c1", "wait": 0, "outcome": "answered"})
        upgrade(url)
        with engine.begin() as conn:
            row = conn.execute(text("SELECT strategy, max_wait_s, overflow_flow, dissuading_hangup, "
                                    "sl_threshold_s FROM flows")).one()
            assert tuple(row) == ("longest-idle", 0, None, False, 0)
            for outcome in ("dissuaded", "overflowed"):
                conn.execute(text(CDR_INSERT), {"call_id": outcome, "wait": 0, "outcome": outcome})
        for call_id, wait, outcome in (("bad1", 0, "bogus"), ("bad2", -1, "failed")):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text(CDR_INSERT), {"call_id": call_id, "wait": wait, "outcome": outcome})
        downgrade(engine, "0001")
        with engine.begin() as conn:  # the new outcomes became 'failed' to fit the old constraint
            assert sorted(conn.execute(text("SELECT outcome FROM cdrs")).scalars()) == ["answered", "failed", "failed"]
        upgrade(url)
        assert differences(url) == []
    finally:
        engine.dispose()


def check_chat_migration(url: str) -> None:
    """0002 with an agent and a CDR, then 0003: the agent keeps its uri with no chat uri, the CDR is
    audio; a chat-only agent (no uri) fits; down to 0002 drops that agent, and up again works."""
    upgrade(url, "0002")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO agents (id, uri, skills) VALUES ('talker', 'sip:t@h', 's')"))
            conn.execute(text(CDR_INSERT), {"call_id": "c1", "wait": 0, "outcome": "answered"})
        upgrade(url)
        with engine.begin() as conn:
            row = conn.execute(text("SELECT uri, chat_uri, chat_capacity FROM agents")).one()
            assert tuple(row) == ("sip:t@h", None, None)
            assert conn.execute(text("SELECT media_type FROM cdrs")).scalar_one() == "audio"
            conn.execute(text("INSERT INTO agents (id, chat_uri, chat_capacity, skills) "
                              "VALUES ('chatter', 'sip:c@h', 6, 's')"))
        downgrade(engine, "0002")
        with engine.begin() as conn:
            assert list(conn.execute(text("SELECT id FROM agents")).scalars()) == ["talker"]
        upgrade(url)
        assert differences(url) == []
    finally:
        engine.dispose()


KEY_INSERT = ("INSERT INTO api_keys (id, name, role, agent_id, secret_sha256) "
              "VALUES (:id, 'n', :role, :agent_id, :digest)")


def check_api_keys_migration(url: str) -> None:
    """0003 with a flow, then 0004: api_keys exists, takes an admin and an agent key and refuses an
    unknown role, an agent key without an agent and an admin key bound to one; down to 0003 drops the
    table and keeps the flow; up again works."""
    upgrade(url, "0003")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO flows (id, skill, queue_uri) VALUES ('f', 's', 'sip:q@h')"))
        upgrade(url)
        with engine.begin() as conn:
            conn.execute(text(KEY_INSERT), {"id": "k1", "role": "admin", "agent_id": None, "digest": "0" * 64})
            conn.execute(text(KEY_INSERT), {"id": "k2", "role": "agent", "agent_id": "1008", "digest": "1" * 64})
            rows = conn.execute(text("SELECT id, role, agent_id, last_used_at, revoked_at FROM api_keys ORDER BY id"))
            assert [tuple(r) for r in rows] == [("k1", "admin", None, None, None), ("k2", "agent", "1008", None, None)]
        for key_id, role, agent_id in (("b1", "root", None), ("b2", "agent", None), ("b3", "admin", "1008")):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text(KEY_INSERT), {"id": key_id, "role": role, "agent_id": agent_id, "digest": "2" * 64})
        downgrade(engine, "0003")
        assert "api_keys" not in inspect(engine).get_table_names()
        with engine.begin() as conn:
            assert list(conn.execute(text("SELECT id FROM flows")).scalars()) == ["f"]
        upgrade(url)
        assert differences(url) == []
    finally:
        engine.dispose()


ATTEMPT_INSERT = ("INSERT INTO cdrs (call_id, attempt, flow_id, caller, received_at, wait_ms, pickup_ms, talk_ms, "
                  "outcome, ended_by, reason, rejections, event_id, call_type, fstats, sip_call_id) VALUES "
                  "(:call_id, :attempt, 'f', 'x', '2024-01-01 00:00:00', 0, 9000, 0, :outcome, 'agent', 'rejected', "
                  "0, '2-0', :call_type, 3, 'sip-1')")


def check_cdr_attempts_migration(url: str) -> None:
    """0004 with CDRs of every kind, then 0005: each old row is the final row (attempt 0) of its
    call with the reference's call_type and fstats, tenant `default`; attempt rows of a call fit
    beside its final row, a second row with the same (call, attempt) does not; down to 0004 keeps
    the final rows (the attempt rows cannot be expressed there) and refuses a second row per call
    again; up again works."""
    upgrade(url, "0004")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for call_id, outcome in (("a", "answered"), ("b", "abandoned"), ("c", "failed"), ("d", "dissuaded")):
                conn.execute(text(CDR_INSERT), {"call_id": call_id, "wait": 0, "outcome": outcome})
        upgrade(url)
        with engine.begin() as conn:
            rows = conn.execute(text("SELECT call_id, attempt, call_type, fstats, tenant, sip_call_id, hold_ms "
                                     "FROM cdrs ORDER BY call_id"))
            assert [tuple(r) for r in rows] == [("a", 0, 0, 7, "default", None, None),
                                                ("b", 0, 1, 9, "default", None, None),
                                                ("c", 0, -1, 1, "default", None, None),
                                                ("d", 0, 1, 1, "default", None, None)]
            for attempt in (1, 2):
                conn.execute(text(ATTEMPT_INSERT), {"call_id": "a", "attempt": attempt, "outcome": "not_connected",
                                                    "call_type": -2})
        for params in ({"call_id": "a", "attempt": 1, "outcome": "not_connected", "call_type": -2},
                       {"call_id": "e", "attempt": -1, "outcome": "not_connected", "call_type": -2}):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text(ATTEMPT_INSERT), params)
        downgrade(engine, "0004")
        with engine.begin() as conn:
            remaining = conn.execute(text("SELECT call_id FROM cdrs ORDER BY call_id")).scalars()
            assert list(remaining) == ["a", "b", "c", "d"]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(CDR_INSERT), {"call_id": "a", "wait": 0, "outcome": "answered"})
        upgrade(url)
        assert differences(url) == []
    finally:
        engine.dispose()


MIGRATION_CHECKS = [check_routing_migration, check_chat_migration, check_api_keys_migration,
                    check_cdr_attempts_migration]


@pytest.mark.parametrize("check", MIGRATION_CHECKS)
def test_migrations(sql_url: str, check: Callable[[str], None]) -> None:
    check(sql_url)
