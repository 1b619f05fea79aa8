"""Alembic environment: runs the migrations on the connection given by `callcenter.db.engine.upgrade`
(or, when run by the `alembic` command line, on `sqlalchemy.url` / CC_DATABASE_URL)."""

from __future__ import annotations

import os

from alembic import context

from callcenter.db.engine import make_engine
from callcenter.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        # the caller owns the transaction (and the migration lock held in it): begin_transaction
        # is then a no-op and the caller commits
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("CC_DATABASE_URL", "sqlite:///callcenter.sqlite3")
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
