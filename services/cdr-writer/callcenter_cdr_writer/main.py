"""`callcenter-cdr-writer`: consume `call.ended` from the events stream into SQL CDRs until SIGTERM.

Reads `cc:{t}:events` (group `cdr-writer`), writes the `cdrs` table (`CC_DATABASE_URL`, SQLite
file by default), dead-letters to `cc:{t}:dead`. Migrates the schema at start (waiting for the
database if it is not up yet). Settings: `CC_*` environment variables. Optional health endpoint
on `CC_HEALTH_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from callcenter.bus import StreamConsumer
from callcenter.contract import streams
from callcenter.db.engine import make_engine, upgrade
from callcenter.lifecycle import run_service, start_from_command_line
from callcenter.redis import connect
from callcenter.settings import CdrWriterSettings, redact_url
from callcenter.store.keys import Keys
from callcenter_cdr_writer.writer import CDR_TYPES, CdrWriter

log = structlog.get_logger(__name__)

GROUP = streams.EVENTS.group


async def migrate(engine: Engine, stop: asyncio.Event) -> bool:
    """Run the migrations, retrying with back-off while the database is unreachable; False if
    stopped first."""
    delay = 0.5
    while not stop.is_set():
        try:
            await asyncio.to_thread(upgrade, engine)
            return True
        except SQLAlchemyError as exc:
            log.warning("cdr_writer.db_unavailable", error=repr(exc), retry_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, 30.0)
    return False


async def run(settings: CdrWriterSettings, stop: asyncio.Event | None = None) -> None:
    engine = make_engine(settings.database_url)
    redis = connect(settings.redis_url)
    keys = Keys(settings.tenant)
    writer = CdrWriter(engine, settings.tenant)
    consumer = StreamConsumer(
        redis, stream=keys.events, group=GROUP, consumer=settings.consumer, handler=writer,
        dead_stream=keys.dead, batch=settings.batch, block_ms=settings.block_ms,
        claim_idle_ms=settings.claim_idle_ms, max_deliveries=settings.max_deliveries, types=CDR_TYPES,
        linger_ms=settings.read_linger_ms)

    async def ready() -> bool:
        def select_one() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        await redis.ping()
        await asyncio.to_thread(select_one)
        return True

    async def prepare(stop: asyncio.Event) -> bool:
        if not await migrate(engine, stop):
            return False
        log.info("cdr_writer.started", consumer=settings.consumer, tenant=settings.tenant,
                 database=redact_url(settings.database_url))  # a ?password= too
        return True

    # the consumer waits out Redis outages itself; stopped, it finishes and acknowledges the batch in hand
    await run_service("cdr-writer", redis=redis, health_port=settings.health_port,
                      health_host=settings.health_host, ready=ready, stop=stop,
                      prepare=prepare, work=consumer.run, on_stop=consumer.request_stop, close=engine.dispose)
    log.info("cdr_writer.stopped", written=writer.written, duplicates=writer.duplicates, dead=writer.dead,
             dead_lettered=consumer.dead_lettered)


def main(argv: Sequence[str] | None = None) -> None:
    start_from_command_line("callcenter-cdr-writer", __doc__ or "", CdrWriterSettings, run, argv)


if __name__ == "__main__":
    main()
