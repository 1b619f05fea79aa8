"""Routing: flow strategy, maximum wait and overflow, dissuading, service level; agent max_no_answer;
CDR outcomes dissuaded and overflowed.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# self-contained on purpose: a migration never imports the current models, which will move on
revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

OLD_OUTCOMES = "outcome IN ('answered', 'abandoned', 'rejected', 'failed')"
NEW_OUTCOMES = "outcome IN ('answered', 'abandoned', 'rejected', 'failed', 'dissuaded', 'overflowed')"
NON_NEGATIVE = "wait_ms >= 0 AND pickup_ms >= 0 AND talk_ms >= 0 AND rejections >= 0"


def _replace_cdr_checks(outcome_check: str, outcome_name: str, non_negative_name: str) -> None:
    """Replace the CHECK constraints of cdrs, found by their text: 0001 created them with the naming
    convention applied twice (`ck_cdrs_ck_cdrs_outcome`), so their names are looked up, not assumed.
    The constraints get `outcome_name` and `non_negative_name` (op.f: taken as is)."""
    checks = sa.inspect(op.get_bind()).get_check_constraints("cdrs")
    with op.batch_alter_table("cdrs") as batch:
        for check in checks:
            if check["name"] and ("outcome" in check["sqltext"] or "wait_ms" in check["sqltext"]):
                batch.drop_constraint(op.f(check["name"]), type_="check")
        batch.create_check_constraint(op.f(outcome_name), sa.text(outcome_check))
        batch.create_check_constraint(op.f(non_negative_name), sa.text(NON_NEGATIVE))


def upgrade() -> None:
    # SQLite cannot alter columns or constraints in place: batch mode copies the table
    with op.batch_alter_table("flows") as batch:
        batch.add_column(sa.Column("strategy", sa.String(32), server_default="longest-idle", nullable=False))
        batch.add_column(sa.Column("max_wait_s", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("overflow_flow", sa.String(64), nullable=True))
        batch.add_column(sa.Column("overflow_uri", sa.String(255), nullable=True))
        batch.add_column(sa.Column("dissuading_hangup", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("dissuading_qsize_th", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("dissuading_ewt_th", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("dissuading_onhold_th", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("sl_threshold_s", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("max_no_answer", sa.Integer(), nullable=True))
    # the names the models give (ck_cdrs_outcome, ck_cdrs_non_negative), so later migrations can use them
    _replace_cdr_checks(NEW_OUTCOMES, "ck_cdrs_outcome", "ck_cdrs_non_negative")


def downgrade() -> None:
    # CDRs with the new outcomes would break the old constraint: they are marked failed
    op.execute("UPDATE cdrs SET outcome = 'failed' WHERE outcome IN ('dissuaded', 'overflowed')")
    _replace_cdr_checks(OLD_OUTCOMES, "ck_cdrs_ck_cdrs_outcome", "ck_cdrs_ck_cdrs_non_negative")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("max_no_answer")
    with op.batch_alter_table("flows") as batch:
        for name in ("sl_threshold_s", "dissuading_onhold_th", "dissuading_ewt_th", "dissuading_qsize_th",
                     "dissuading_hangup", "overflow_uri", "overflow_flow", "max_wait_s", "strategy"):
            batch.drop_column(name)
