"""Run by test_logs.py in a child process (logging set-up is process-wide): configures logging as
a service does, writes stdlib lines the way uvicorn and SQLAlchemy do, and has a StreamConsumer
hand one entry of call `c-logged` to a handler that logs. Usage: logging_probe.py REDIS_URL FORMAT"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
import structlog

from callcenter.bus import ACK, StreamConsumer, Verdict
from callcenter.contract.codec import Entry, encode
from callcenter.logs import configure_logging

STREAM = "cc:{logs}:commands"


async def main(url: str, fmt: str) -> None:
    configure_logging("info", fmt)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 4242)
    logging.getLogger("sqlalchemy.engine.Engine").warning("pool %s is %s", "default", "exhausted")
    redis = aioredis.Redis.from_url(url)
    await redis.delete(STREAM)
    await redis.xadd(STREAM, encode("command.hangup", {"call_id": "c-logged", "reason": "test"}))  # type: ignore[arg-type]

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        structlog.get_logger("probe").info("probe.handled", count=len(entries))
        logging.getLogger("sqlalchemy.engine.Engine").info("INSERT INTO cdrs")
        consumer.request_stop()
        return {e.id: ACK for e in entries}

    consumer = StreamConsumer(redis, stream=STREAM, group="probe", consumer="p1", handler=handler,
                              dead_stream="cc:{logs}:dead", block_ms=100)
    await asyncio.wait_for(consumer.run(), 10)
    structlog.get_logger("probe").info("probe.after")
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
