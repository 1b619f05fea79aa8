"""Initial schema: flows, agents, cdrs.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# self-contained on purpose: a migration never imports the current models, which will move on
revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "flows",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("skill", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="256", nullable=False),
        sa.Column("welcome_uri", sa.String(255), nullable=True),
        sa.Column("queue_uri", sa.String(255), nullable=False),
        sa.Column("dissuading_uri", sa.String(255), nullable=True),
        sa.Column("prepend_cid", sa.String(32), nullable=True),
        sa.Column("max_wrapup_s", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flows"),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("uri", sa.String(255), nullable=False),
        sa.Column("skills", sa.String(1024), nullable=False),
        sa.Column("wrapup_s", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
    )
    op.create_table(
        "cdrs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("flow_id", sa.String(64), nullable=False),
        sa.Column("caller", sa.String(255), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wait_ms", sa.BigInteger(), nullable=False),
        sa.Column("pickup_ms", sa.BigInteger(), nullable=False),
        sa.Column("talk_ms", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("ended_by", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(128), nullable=False),
        sa.Column("rejections", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cdrs"),
        sa.UniqueConstraint("call_id", name="uq_cdrs_call_id"),
        sa.CheckConstraint("outcome IN ('answered', 'abandoned', 'rejected', 'failed')", name="ck_cdrs_outcome"),
        sa.CheckConstraint("wait_ms >= 0 AND pickup_ms >= 0 AND talk_ms >= 0 AND rejections >= 0",
                           name="ck_cdrs_non_negative"),
    )
    op.create_index("ix_cdrs_received_at", "cdrs", ["received_at"])
    op.create_index("ix_cdrs_flow_id_received_at", "cdrs", ["flow_id", "received_at"])
    op.create_index("ix_cdrs_agent_id_received_at", "cdrs", ["agent_id", "received_at"])


def downgrade() -> None:
    op.drop_table("cdrs")
    op.drop_table("agents")
    op.drop_table("flows")
