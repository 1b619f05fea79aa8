"""`callcenter-api`: the HTTP api of callcenter (provisioning, agent states, live view, CDRs).

Serves on `CC_API_HOST:CC_API_PORT` with uvicorn; reads and writes Redis (`CC_REDIS_URL`) and the
SQL database (`CC_DATABASE_URL`, SQLite file by default, migrated at start). Settings: `CC_*`
environment variables. Health: GET /healthz and /readyz on the api's own port.
"""

from __future__ import annotations

from collections.abc import Sequence

import uvicorn

from callcenter.lifecycle import parse_command_line
from callcenter.logs import configure_logging
from callcenter.settings import ApiSettings
from callcenter_api.app import create_app


def main(argv: Sequence[str] | None = None) -> None:
    parse_command_line("callcenter-api", __doc__ or "", ApiSettings, argv)
    settings = ApiSettings()
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn handles SIGTERM itself: it stops accepting, drains requests, then runs the lifespan
    # exit. log_config=None: its loggers keep the root handler of configure_logging (JSON lines).
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level.lower(), proxy_headers=True, log_config=None)


if __name__ == "__main__":
    main()
