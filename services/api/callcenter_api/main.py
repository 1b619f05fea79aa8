"""`callcenter-api`: build ApiSettings from CC_* variables, configure logging, serve with uvicorn."""

from __future__ import annotations

import uvicorn

from callcenter.logs import configure_logging
from callcenter.settings import ApiSettings
from callcenter_api.app import create_app


def main() -> None:
    settings = ApiSettings()
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn handles SIGTERM itself: it stops accepting, drains requests, then runs the lifespan exit
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level.lower(), proxy_headers=True)


if __name__ == "__main__":
    main()
