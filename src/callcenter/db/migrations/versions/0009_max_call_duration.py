"""A per-flow maximum call duration: flows.max_call_duration_s (0 = none). A connected call of the
flow is hung up at that limit (CDR reason max_duration).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("flows", sa.Column("max_call_duration_s", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("flows", "max_call_duration_s")
