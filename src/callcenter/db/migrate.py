"""`callcenter-migrate`: bring the SQL schema (`CC_DATABASE_URL`) to the head revision, then exit 0.

Run once per deployment before the services that use SQL (compose's `migrate` service; on
Kubernetes, a Job of your release process, see docs/operations.md). The api and the cdr-writer still
migrate at start, so a setup without it works; the migration is idempotent and serialised across
processes (`callcenter.db.engine.upgrade`). Reads the database; writes its schema and log lines.
Settings: `CC_*` environment variables (of the common ones it uses only the log settings).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from callcenter.db.engine import make_engine, upgrade
from callcenter.lifecycle import parse_command_line
from callcenter.logs import configure_logging
from callcenter.settings import MigrateSettings, redact_url

log = structlog.get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parse_command_line("callcenter-migrate", __doc__ or "", MigrateSettings, argv)
    settings = MigrateSettings()
    configure_logging(settings.log_level, settings.log_format)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    log.info("migrate.done", database=redact_url(settings.database_url))


if __name__ == "__main__":
    main()
