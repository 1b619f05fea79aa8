"""`callcenter-api`: the HTTP api of callcenter (provisioning, agent states, live view, CDRs, events).

Serves on `CC_API_HOST:CC_API_PORT` (loopback by default) with uvicorn; reads and writes Redis
(`CC_REDIS_URL`) and the SQL database (`CC_DATABASE_URL`, SQLite file by default, migrated at
start). Every route but /healthz and /readyz needs `Authorization: Bearer <API key or token>`.
Settings: `CC_*` environment variables. Health: GET /healthz and /readyz on the api's own port.

The first key (there is none on a new database) comes from the command line, against SQL directly:

    callcenter-api create-key [--name ops] [--role admin|supervisor|agent] [--agent-id 1008]

prints the new key (once; only its hash is stored) on stdout; then `callcenter key create` (HTTP)
makes the others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn
from sqlalchemy.orm import Session

from callcenter.db.engine import make_engine, upgrade
from callcenter.lifecycle import parse_command_line
from callcenter.logs import configure_logging
from callcenter.settings import ApiSettings
from callcenter_api import keys
from callcenter_api.app import create_app

CREATE_KEY = "create-key"


def create_key(argv: Sequence[str]) -> int:
    """`callcenter-api create-key`: migrate the schema, add a key, print it on stdout."""
    parser = argparse.ArgumentParser(prog=f"callcenter-api {CREATE_KEY}",
                                     description="Create an API key directly in SQL (CC_DATABASE_URL) and print "
                                                 "it once: the first admin key of a new installation.")
    parser.add_argument("--name", default="ops", help="who or what holds the key (default: ops)")
    parser.add_argument("--role", default="admin", choices=("admin", "supervisor", "agent"))
    parser.add_argument("--agent-id", default=None, help="the agent an agent key acts for")
    args = parser.parse_args(argv)
    settings = ApiSettings()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        with Session(engine) as session, session.begin():
            try:
                _row, plain = keys.create(session, name=args.name, role=args.role, agent_id=args.agent_id)
            except ValueError as exc:
                parser.error(str(exc))
    finally:
        engine.dispose()
    sys.stdout.write(plain + "\n")  # the key itself, shown this once, for the operator to keep
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == CREATE_KEY:
        sys.exit(create_key(args[1:]))
    parse_command_line("callcenter-api", __doc__ or "", ApiSettings, argv)
    settings = ApiSettings()
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn handles SIGTERM itself: it stops accepting, drains requests, then runs the lifespan
    # exit. log_config=None: its loggers keep the root handler of configure_logging (JSON lines).
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level.lower(), proxy_headers=True, log_config=None)


if __name__ == "__main__":
    main()
