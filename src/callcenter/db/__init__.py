"""SQL side of callcenter: models (`models`), engines and migrations (`engine`).

Tables: `flows` and `agents` (the durable home of provisioning, cached in Redis) and `cdrs`
(one row per call, written by the cdr-writer). SQLite by default, PostgreSQL via
`postgresql+psycopg://`. Services call `engine.upgrade(url)` at start. Alembic is configured in
code (no alembic.ini); to write a new migration from a checkout:

    python -c "from alembic import command; from callcenter.db.engine import alembic_config; \
               command.revision(alembic_config(), 'what changes', rev_id='0002')"

then edit the file by hand (keep it self-contained: no imports from callcenter.db.models).
"""
