"""`callcenter-dispatcher`: consume sip-edge reports and fire timers until SIGTERM, then drain.

Reads `cc:{t}:reports` (consumer group `dispatcher`) and applies each report with its atomic Lua
step (a report that comes before its predecessor is parked and retried beside the loop, see
handler.py); fires due timers, frees agents no live call holds, ends the calls of lost sip-edges. At
start it writes the call-handling parameters set explicitly in its environment into
`cc:{t}:config`. Settings: `CC_*` environment variables. Optional health endpoint on
`CC_HEALTH_PORT`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from callcenter.bus import StreamConsumer
from callcenter.contract import streams
from callcenter.lifecycle import run_service, start_from_command_line
from callcenter.redis import REDIS_DOWN, connect
from callcenter.redis_durability import ReplicaWait, expose_wait_count
from callcenter.settings import DispatcherSettings
from callcenter.store import Store
from callcenter.store.config_writes import explicit_config, seed_config
from callcenter.stream_read import quick_sends
from callcenter_dispatcher.edges import EdgeWatch
from callcenter_dispatcher.handler import PARK_RETRY_MAX_S, ReportHandler
from callcenter_dispatcher.timers import lapse_registrations, reconcile_once, run_every, run_timers

log = structlog.get_logger(__name__)

GROUP = streams.REPORTS.group


async def seed_config_from_env(settings: DispatcherSettings, store: Store, stop: asyncio.Event) -> bool:
    """Seed `cc:{t}:config` with the call-handling parameters the operator set explicitly (CC_*
    variables) when it does not exist yet; after that the api's PATCH /v1/config is its only
    writer. The api seeds the same way at its start: a dispatcher may come up first, and must not
    run on defaults its environment overrides. Redis may not be up yet (a pod starting before it):
    wait for it."""
    config = explicit_config(settings)
    delay = 0.1
    while config and not stop.is_set():
        try:
            await seed_config(store.redis, store.keys, config)
            break
        except REDIS_DOWN as exc:
            log.warning("dispatcher.redis_unavailable", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    log.info("dispatcher.started", consumer=settings.consumer, tenant=settings.tenant)
    return True


async def run(settings: DispatcherSettings, stop: asyncio.Event | None = None) -> None:
    redis = connect(settings.redis_url)
    quick_sends(redis)  # its small sends without a timer task each (issue 15)
    store = Store(redis, settings.tenant)
    # parked reports are retried (and kept claimed) several times per claim_idle_ms
    handler = ReportHandler(store, out_of_order_max_ms=settings.out_of_order_max_ms,
                            retry_max_s=min(PARK_RETRY_MAX_S, settings.claim_idle_ms / 4000))
    consumer = StreamConsumer(
        redis, stream=store.keys.reports, group=GROUP, consumer=settings.consumer,
        handler=handler, dead_stream=store.keys.dead, batch=settings.batch,
        block_ms=settings.block_ms, claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries, linger_ms=settings.read_linger_ms,
        wait=ReplicaWait.of(settings.redis_wait_replicas, settings.redis_wait_timeout_ms))
    handler.settler = consumer
    expose_wait_count(f"{GROUP}_ack")

    edges = EdgeWatch(store, settings.edge_lapse_ms)

    async def ready() -> bool:
        return bool(await redis.ping())

    await run_service(
        "dispatcher", redis=redis, health_port=settings.health_port, health_host=settings.health_host,
        ready=ready, stop=stop,
        prepare=lambda stop: seed_config_from_env(settings, store, stop),
        work=consumer.run, on_stop=consumer.request_stop,
        loops=[handler.retry_parked,
               lambda stop: run_timers(store, stop, settings.timer_interval_ms),
               lambda stop: run_every("reconciler", settings.reconcile_interval_ms, stop,
                                      lambda: reconcile_once(store, settings.edge_lapse_ms, GROUP,
                                                             settings.reports_keep_ms, settings.events_keep_ms)),
               lambda stop: run_every("edges", edges.interval_ms, stop, edges.check),
               lambda stop: run_every("registrations", settings.registration_lapse_interval_ms, stop,
                                      lambda: lapse_registrations(store))])
    log.info("dispatcher.stopped", handled=consumer.handled, dead_lettered=consumer.dead_lettered)


def main(argv: Sequence[str] | None = None) -> None:
    start_from_command_line("callcenter-dispatcher", __doc__ or "", DispatcherSettings, run, argv)


if __name__ == "__main__":
    main()
