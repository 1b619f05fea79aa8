"""structlog set-up: JSON lines in containers, a console renderer on a TTY.

Writes: log lines to stderr. Messages are event names with bound context:
`log.info("call.assigned", agent_id=...)`; `call_id`, `stream` and `entry_id` of the unit of work
in hand are bound with `structlog.contextvars` (see `callcenter.bus`) and merged into every line.
The standard library's records (uvicorn, SQLAlchemy, Alembic) go through structlog's
`ProcessorFormatter`, so they come out in the same format, with the same bound context.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # standard-library records: the logger's name says where a line comes from (uvicorn.error, alembic...)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.StackInfoRenderer(),
                    structlog.processors.format_exc_info,
                    renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # structlog's own lines skip the logging module (cheaper on the dispatcher's hot path)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def excerpt(value: str, limit: int = 200) -> str:
    """`value` cut to `limit` characters, saying how long it was: for text from outside (a payload,
    a client's value, an error quoting either) in a log line or an error message."""
    return value if len(value) <= limit else f"{value[:limit]}… ({len(value)} chars)"
