"""Agents' SIP registration settings: digest credentials as HA1s, registration required at login.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# self-contained on purpose: a migration never imports the current models, which will move on
revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "agent_sip",
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("realm", sa.String(128), nullable=True),
        sa.Column("ha1_md5", sa.String(32), nullable=True),
        sa.Column("ha1_sha256", sa.String(64), nullable=True),
        sa.Column("registration_required", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", name="pk_agent_sip"),
    )


def downgrade() -> None:
    op.drop_table("agent_sip")
