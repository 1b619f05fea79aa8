"""`callcenter-cdr-writer`: consume `call.ended` from the events stream into SQL CDRs until SIGTERM.

Reads `cc:{t}:events` (group `cdr-writer`), writes the `cdrs` table (`CC_DATABASE_URL`, SQLite
file by default), dead-letters to `cc:{t}:dead`. Migrates the schema at start (waiting for the
database if it is not up yet). Optional health endpoint on `CC_HEALTH_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from callcenter.bus import StreamConsumer
from callcenter.contract import streams
from callcenter.db.engine import make_engine, upgrade
from callcenter.health import serve_health
from callcenter.lifecycle import on_stop_signals
from callcenter.logs import configure_logging
from callcenter.settings import CdrWriterSettings
from callcenter.store.keys import Keys
from callcenter_cdr_writer.writer import CdrWriter

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
    stop = stop or asyncio.Event()
    engine = make_engine(settings.database_url)
    redis = aioredis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.tenant)
    writer = CdrWriter(engine)
    consumer = StreamConsumer(
        redis, stream=keys.events, group=GROUP, consumer=settings.consumer, handler=writer,
        dead_stream=keys.dead, batch=settings.batch, block_ms=settings.block_ms,
        claim_idle_ms=settings.claim_idle_ms, max_deliveries=settings.max_deliveries)

    def request_stop() -> None:
        stop.set()
        consumer.request_stop()

    # not in the main thread (tests run the service in-process): the caller sets `stop` instead
    with contextlib.suppress(NotImplementedError, RuntimeError):
        on_stop_signals(request_stop)

    async def ready() -> bool:
        def select_one() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        await redis.ping()
        await asyncio.to_thread(select_one)
        return not consumer.stopping

    health = await serve_health("0.0.0.0", settings.health_port, ready) if settings.health_port else None
    try:
        if await migrate(engine, stop):
            log.info("cdr_writer.started", consumer=settings.consumer, tenant=settings.tenant,
                     database=engine.url.render_as_string(hide_password=True))
            consume = asyncio.create_task(consumer.run())  # it waits out Redis outages itself
            watcher = asyncio.create_task(stop.wait())
            await asyncio.wait({consume, watcher}, return_when=asyncio.FIRST_COMPLETED)
            consumer.request_stop()
            watcher.cancel()
            await consume  # finishes the batch in hand and acknowledges it
    finally:
        if health:
            health.close()
        await redis.aclose()
        engine.dispose()
    log.info("cdr_writer.stopped", written=writer.written, duplicates=writer.duplicates, dead=writer.dead,
             dead_lettered=consumer.dead_lettered)


def main() -> None:
    settings = CdrWriterSettings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
