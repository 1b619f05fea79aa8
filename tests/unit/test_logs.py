"""Log lines as a service writes them (callcenter.logs): the standard library's records (uvicorn,
SQLAlchemy, Alembic) come out as JSON lines like structlog's own, and the context StreamConsumer
binds around a handler (stream, entry_id, call_id) is in the lines logged inside it, and only
there. Logging set-up is process-wide, so each case runs tests/unit/logging_probe.py in a child
process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from callcenter_dev.servers import RedisServer

PROBE = Path(__file__).with_name("logging_probe.py")


def probe_lines(redis_server: RedisServer, fmt: str) -> list[str]:
    result = subprocess.run([sys.executable, str(PROBE), redis_server.url, fmt], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def by_event(lines: list[str]) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in lines]  # every line is JSON, stdlib ones included
    return {r["event"]: r for r in records}


def test_stdlib_lines_from_uvicorn_and_sqlalchemy_are_json(redis_server: RedisServer) -> None:
    records = by_event(probe_lines(redis_server, "json"))
    started = records["Started server process [4242]"]
    assert (started["logger"], started["level"]) == ("uvicorn.error", "info")
    assert "timestamp" in started
    pool = records["pool default is exhausted"]
    assert (pool["logger"], pool["level"]) == ("sqlalchemy.engine.Engine", "warning")


def test_a_handler_logs_with_the_entry_call_and_stream_bound(redis_server: RedisServer) -> None:
    records = by_event(probe_lines(redis_server, "json"))
    handled = records["probe.handled"]
    assert handled["call_id"] == "c-logged"
    assert handled["stream"] == "cc:{logs}:commands"
    assert handled["entry_id"].count("-") == 1
    # a stdlib line inside the handler carries the same context
    insert = records["INSERT INTO cdrs"]
    assert (insert["call_id"], insert["entry_id"]) == ("c-logged", handled["entry_id"])
    # the binding ends with the handling
    assert "call_id" not in records["probe.after"] and "stream" not in records["probe.after"]


def test_console_format_renders_stdlib_lines_too(redis_server: RedisServer) -> None:
    lines = probe_lines(redis_server, "console")
    [started] = [line for line in lines if "Started server process [4242]" in line]
    assert "[info" in started and "uvicorn.error" in started
    [handled] = [line for line in lines if "probe.handled" in line]
    assert "call_id=c-logged" in handled
