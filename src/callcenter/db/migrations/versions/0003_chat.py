"""Chat and the flow-id message: agent chat URI and capacity (audio URI now optional), flow
flow-id message URI and chat policy, CDR media type.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# self-contained on purpose: a migration never imports the current models, which will move on
revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("flows") as batch:
        batch.add_column(sa.Column("flow_id_uri", sa.String(255), nullable=True))
        batch.add_column(sa.Column("chat_policy", sa.String(16), nullable=True))
    with op.batch_alter_table("agents") as batch:
        batch.alter_column("uri", existing_type=sa.String(255), nullable=True)
        batch.add_column(sa.Column("chat_uri", sa.String(255), nullable=True))
        batch.add_column(sa.Column("chat_capacity", sa.Integer(), nullable=True))
    with op.batch_alter_table("cdrs") as batch:
        batch.add_column(sa.Column("media_type", sa.String(8), server_default="audio", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("cdrs") as batch:
        batch.drop_column("media_type")
    # a chat-only agent cannot be expressed before 0003: it is removed
    op.execute("DELETE FROM agents WHERE uri IS NULL")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("chat_capacity")
        batch.drop_column("chat_uri")
        batch.alter_column("uri", existing_type=sa.String(255), nullable=False)
    with op.batch_alter_table("flows") as batch:
        batch.drop_column("chat_policy")
        batch.drop_column("flow_id_uri")
