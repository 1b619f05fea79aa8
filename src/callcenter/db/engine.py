"""Engines and schema migrations for the SQL database: SQLite by default, PostgreSQL or MySQL/MariaDB
in production.

`make_engine(url)` builds a SQLAlchemy engine (SQLite: WAL journal and a busy timeout, so the
api and the cdr-writer can share one file). `upgrade(url)` runs the Alembic migrations in
`callcenter.db.migrations` up to head, configured in code (no alembic.ini). It is safe to call at
every service start, from several processes at once: the migration runs under a database-wide
lock (a PostgreSQL advisory lock; a MySQL named lock, GET_LOCK; SQLite's write lock via BEGIN
IMMEDIATE), so the first process migrates and the others find the schema at head. MySQL/MariaDB
commit every DDL statement on their own: a migration that fails half-way there leaves its first
steps applied (SQLite and PostgreSQL roll the whole migration back).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import IntegrityError, OperationalError

DEFAULT_URL = "sqlite:///callcenter.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# any constant shared by every callcenter process: the key of the migration advisory lock
PG_MIGRATION_LOCK = 0x63616C6C  # "call"
MYSQL_MIGRATION_LOCK = "callcenter.migrate"
MYSQL_LOCK_WAIT_S = 300


def make_engine(url: str = DEFAULT_URL, **kwargs: Any) -> Engine:
    """An engine for `url`; `postgresql://` means psycopg 3 (`postgresql+psycopg://`), `mysql://` and
    `mariadb://` PyMySQL (`mysql+pymysql://`)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    if parsed.get_backend_name() == "sqlite":
        connect_args = kwargs.pop("connect_args", {})
        # the driver's own wait for a locked database, in seconds
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        # the writer works in a thread (asyncio.to_thread); connections are pooled, not shared
        connect_args.setdefault("check_same_thread", False)
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        event.listen(engine, "handle_error", _mysql_check_is_integrity)
        event.listen(engine, "connect", _mysql_on_connect)
    return engine


def _mysql_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # DATETIME has no zone: every timestamp is UTC, also those the server fills in (NOW())
        cur.execute("SET time_zone = '+00:00'")
    finally:
        cur.close()


# a CHECK constraint refused the row: MariaDB's ER_CONSTRAINT_FAILED and MySQL's
# ER_CHECK_CONSTRAINT_VIOLATED, which PyMySQL reports as OperationalError (as if the server were
# unreachable); a bad row is an IntegrityError on every other backend and must be one here too
MYSQL_CHECK_ERRNOS = (4025, 3819)


def _mysql_check_is_integrity(context: ExceptionContext) -> BaseException | None:
    orig = context.original_exception
    errno = orig.args[0] if getattr(orig, "args", None) else None
    if isinstance(context.sqlalchemy_exception, OperationalError) and errno in MYSQL_CHECK_ERRNOS:
        return IntegrityError(context.statement, context.parameters, orig)
    return None


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # WAL: readers (api) never block the writer (cdr-writer) and vice versa
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; the safe WAL setting
    finally:
        cur.close()


def alembic_config() -> Config:
    """Alembic configuration built in code: the scripts are package data of callcenter.db."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("callcenter.db") / "migrations"))
    return cfg


def upgrade(url: str | Engine = DEFAULT_URL, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (idempotent; serialised across processes)."""
    engine = make_engine(url) if isinstance(url, str) else url
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # take SQLite's write lock before reading alembic_version (busy_timeout waits)
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
            elif conn.dialect.name == "mysql":
                # a session lock: MySQL's DDL commits implicitly, so no transaction can hold it
                got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"),
                                   {"name": MYSQL_MIGRATION_LOCK, "wait": MYSQL_LOCK_WAIT_S}).scalar()
                if got != 1:
                    raise TimeoutError(f"the migration lock was not free within {MYSQL_LOCK_WAIT_S} s")
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                if conn.dialect.name == "mysql":
                    conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": MYSQL_MIGRATION_LOCK})
                    conn.commit()
    finally:
        if isinstance(url, str):
            engine.dispose()
