"""`callcenter-sip-edge`: the SIP B2BUA of callcenter. Drains on SIGTERM."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from callcenter.health import serve_health
from callcenter.lifecycle import on_stop_signals
from callcenter.logs import configure_logging
from callcenter.settings import EdgeSettings
from callcenter_sip_edge.service import EdgeService


async def run(settings: EdgeSettings) -> None:
    redis = aioredis.Redis.from_url(settings.redis_url)
    service = EdgeService(settings, redis)
    on_stop_signals(service.request_stop)
    health = None
    if settings.health_port:
        async def ready() -> bool:
            return bool(await redis.ping()) and not service._stop.is_set()
        health = await serve_health("0.0.0.0", settings.health_port, ready)
    try:
        await service.run()
    finally:
        if health:
            health.close()
        await redis.aclose()


def main() -> None:
    settings = EdgeSettings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
