"""`callcenter-dispatcher`: consume sip-edge reports and fire timers until SIGTERM, then drain."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import structlog

from callcenter.bus import StreamConsumer
from callcenter.contract import streams
from callcenter.health import serve_health
from callcenter.lifecycle import on_stop_signals
from callcenter.logs import configure_logging
from callcenter.redis import REDIS_DOWN
from callcenter.settings import DispatcherSettings
from callcenter.store import Store
from callcenter_dispatcher.edges import CHECK_INTERVAL_MS, check_edges
from callcenter_dispatcher.handler import ReportHandler
from callcenter_dispatcher.timers import reconcile_once, run_every, run_timers

log = structlog.get_logger(__name__)

GROUP = streams.REPORTS.group

CONFIG_FIELDS = ("wrapup_s", "ring_timeout_s", "reject_on_no_agents", "no_agents_code", "queue_pos_param",
                 "offer_lease_grace_s")  # the others in cc:{t}:config are set through the api


async def run(settings: DispatcherSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    redis = aioredis.Redis.from_url(settings.redis_url)
    store = Store(redis, settings.tenant)
    # only what the operator set explicitly (CC_* variables): the rest keeps the values in Redis,
    # changed at run time through the api (PATCH /v1/config), or the defaults of lua/common.lua
    config = {name: getattr(settings, name) for name in CONFIG_FIELDS if name in settings.model_fields_set}
    delay = 0.1
    while config and not stop.is_set():  # Redis may not be up yet (a pod starting before it): wait for it
        try:
            await store.write_config(config)
            break
        except REDIS_DOWN as exc:
            log.warning("dispatcher.redis_unavailable", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    consumer = StreamConsumer(
        redis, stream=store.keys.reports, group=GROUP, consumer=settings.consumer,
        handler=ReportHandler(store), dead_stream=store.keys.dead, batch=settings.batch,
        block_ms=settings.block_ms, claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries)

    def request_stop() -> None:
        stop.set()
        consumer.request_stop()

    try:
        on_stop_signals(request_stop)
    except (NotImplementedError, RuntimeError):  # not the main thread (tests run it in-process)
        pass
    health = None
    if settings.health_port:
        async def ready() -> bool:
            return bool(await redis.ping())
        health = await serve_health("0.0.0.0", settings.health_port, ready)
    log.info("dispatcher.started", consumer=settings.consumer, tenant=settings.tenant)
    timers = asyncio.create_task(run_timers(store, stop, settings.timer_interval_ms))
    reconciler = asyncio.create_task(run_every("reconciler", settings.reconcile_interval_ms, stop,
                                               lambda: reconcile_once(store)))
    edges = asyncio.create_task(run_every("edges", CHECK_INTERVAL_MS, stop,
                                          lambda: check_edges(store, settings.edge_lapse_ms)))
    watcher = asyncio.create_task(stop.wait())
    consume = asyncio.create_task(consumer.run())
    await asyncio.wait({consume, watcher}, return_when=asyncio.FIRST_COMPLETED)
    consumer.request_stop()
    await consume
    await timers
    await reconciler
    await edges
    watcher.cancel()
    if health:
        health.close()
    await redis.aclose()
    log.info("dispatcher.stopped", handled=consumer.handled, dead_lettered=consumer.dead_lettered)


def main() -> None:
    settings = DispatcherSettings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
