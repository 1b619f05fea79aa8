"""CDRs per attempt with the reference's meaning: one final row per call (attempt 0) plus one row per
agent attempt that did not connect; the reference's call_type and fstats; our tenant, SIP Call-ID,
edge, priority, queue position at entry, hold time, dissuading rule and overflow target.

The idempotency key becomes (call_id, attempt). Existing rows become the final rows of their calls,
with call_type and fstats derived from their outcome. Down: the attempt rows are deleted (one row
per call is all 0004 can hold), the final rows stay.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# self-contained on purpose: a migration never imports the current models, which will move on
revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

OLD_OUTCOMES = "outcome IN ('answered', 'abandoned', 'rejected', 'failed', 'dissuaded', 'overflowed')"
NEW_OUTCOMES = ("outcome IN ('answered', 'abandoned', 'rejected', 'failed', 'dissuaded', 'overflowed', "
                "'not_connected')")
ATTEMPT_CHECK = "attempt >= 0 AND (hold_ms IS NULL OR hold_ms >= 0)"


def _new_columns() -> list[sa.Column[object]]:
    """The new columns of cdrs (new objects on every call: a Column belongs to one table)."""
    return [
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("call_type", sa.Integer(), server_default="-1", nullable=False),
        sa.Column("fstats", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tenant", sa.String(64), server_default="default", nullable=False),
        sa.Column("sip_call_id", sa.String(255), nullable=True),
        sa.Column("edge", sa.String(128), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("queue_position", sa.Integer(), nullable=True),
        sa.Column("hold_ms", sa.BigInteger(), nullable=True),
        sa.Column("dissuaded_rule", sa.String(16), nullable=True),
        sa.Column("overflow_to_flow", sa.String(64), nullable=True),
        sa.Column("overflow_to_uri", sa.String(255), nullable=True),
    ]


def _unique_on(columns: list[str]) -> str | None:
    """The name of the unique constraint of cdrs on exactly `columns` (0001's name is looked up,
    not assumed: the naming convention may have been applied to it), or None."""
    inspector = sa.inspect(op.get_bind())
    found = [u["name"] for u in inspector.get_unique_constraints("cdrs") if u["column_names"] == columns]
    # MySQL reports a unique constraint as a unique index
    found += [i["name"] for i in inspector.get_indexes("cdrs") if i.get("unique") and i["column_names"] == columns]
    return next((name for name in found if name), None)


def _outcome_check_name() -> str | None:
    for check in sa.inspect(op.get_bind()).get_check_constraints("cdrs"):
        if check["name"] and "outcome" in check["sqltext"]:
            return str(check["name"])
    return None


def upgrade() -> None:
    old_unique = _unique_on(["call_id"])
    old_check = _outcome_check_name()
    with op.batch_alter_table("cdrs") as batch:
        for column in _new_columns():
            batch.add_column(column)
        if old_unique:
            batch.drop_constraint(op.f(old_unique), type_="unique")
        if old_check:
            batch.drop_constraint(op.f(old_check), type_="check")
        batch.create_unique_constraint(op.f("uq_cdrs_call_id_attempt"), ["call_id", "attempt"])
        batch.create_check_constraint(op.f("ck_cdrs_outcome"), sa.text(NEW_OUTCOMES))
        batch.create_check_constraint(op.f("ck_cdrs_attempt"), sa.text(ATTEMPT_CHECK))
    # the rows so far are final rows: the reference's call_type and fstats from their outcome
    op.execute("UPDATE cdrs SET call_type = CASE outcome WHEN 'answered' THEN 0 WHEN 'failed' THEN -1 ELSE 1 END, "
               "fstats = 1"
               " + CASE WHEN outcome = 'answered' OR agent_id IS NOT NULL OR rejections > 0 THEN 2 ELSE 0 END"
               " + CASE WHEN outcome = 'answered' THEN 4 ELSE 0 END"
               " + CASE WHEN outcome = 'abandoned' THEN 8 ELSE 0 END")


def downgrade() -> None:
    op.execute("DELETE FROM cdrs WHERE attempt <> 0")
    old_check = _outcome_check_name()
    with op.batch_alter_table("cdrs") as batch:
        batch.drop_constraint(op.f("ck_cdrs_attempt"), type_="check")
        if old_check:
            batch.drop_constraint(op.f(old_check), type_="check")
        batch.drop_constraint(op.f("uq_cdrs_call_id_attempt"), type_="unique")
        for column in reversed(_new_columns()):
            batch.drop_column(column.name)
        batch.create_unique_constraint(op.f("uq_cdrs_call_id"), ["call_id"])
        batch.create_check_constraint(op.f("ck_cdrs_outcome"), sa.text(OLD_OUTCOMES))
