"""CDR exports stored in chunks: `cdr_export_chunks` (export, seq, data) instead of one
`cdr_exports.content` value, so a job streams a large export out of SQL chunk by chunk and the api
streams the download the same way (on MySQL/MariaDB a BLOB also held no more than 64 KiB).

Up: each existing file becomes its chunks, `content` is dropped. Down: the chunks are joined back
into `content` (as one value, as before; on MySQL/MariaDB a file over 64 KiB does not fit there and
its export becomes `failed`, saying so), the table is dropped.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# self-contained on purpose: a migration never imports the current models, which will move on
revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

CHUNK_BYTES = 256 * 1024
# up to 16 MiB a chunk (MEDIUMBLOB on MySQL/MariaDB, where a plain BLOB holds 64 KiB)
CHUNK_TYPE = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")

exports = sa.table("cdr_exports", sa.column("id", sa.String), sa.column("content", sa.LargeBinary))
chunks = sa.table("cdr_export_chunks", sa.column("export_id", sa.String), sa.column("seq", sa.Integer),
                  sa.column("data", sa.LargeBinary))


def upgrade() -> None:
    op.create_table(
        "cdr_export_chunks",
        sa.Column("export_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", CHUNK_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("export_id", "seq", name="pk_cdr_export_chunks"),
    )
    conn = op.get_bind()
    for export_id, content in conn.execute(sa.select(exports.c.id, exports.c.content)
                                           .where(exports.c.content.is_not(None))).all():
        pieces = [content[at:at + CHUNK_BYTES] for at in range(0, len(content), CHUNK_BYTES)]
        if pieces:
            conn.execute(chunks.insert(), [{"export_id": export_id, "seq": seq, "data": piece}
                                           for seq, piece in enumerate(pieces)])
    with op.batch_alter_table("cdr_exports") as batch:
        batch.drop_column("content")


def downgrade() -> None:
    with op.batch_alter_table("cdr_exports") as batch:
        batch.add_column(sa.Column("content", sa.LargeBinary(), nullable=True))
    conn = op.get_bind()
    done = {export_id for (export_id,) in conn.execute(
        sa.text("SELECT id FROM cdr_exports WHERE status = 'done'")).all()}
    # 0006's content is a BLOB on MySQL/MariaDB: 64 KiB at most
    limit = 65_535 if conn.dialect.name == "mysql" else None
    for export_id in sorted(done):
        data = b"".join(piece for (piece,) in conn.execute(
            sa.select(chunks.c.data).where(chunks.c.export_id == export_id).order_by(chunks.c.seq)))
        if limit is not None and len(data) > limit:
            conn.execute(sa.text("UPDATE cdr_exports SET status = 'failed', error = :error WHERE id = :id"),
                         {"id": export_id, "error": f"{len(data)} bytes: more than revision 0006 holds here"})
            continue
        conn.execute(exports.update().where(exports.c.id == export_id).values(content=data))
    op.drop_table("cdr_export_chunks")
