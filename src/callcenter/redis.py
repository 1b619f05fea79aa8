"""Redis plumbing shared by every service: the client factory, what counts as "Redis is down",
and the one bytes-to-text helper (clients do not use `decode_responses`: stream payloads are
msgpack bytes).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Errors after which a service waits and retries rather than failing the unit of work.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def connect(url: str) -> aioredis.Redis:
    """An asyncio client for `url` (connections are opened lazily, so this never blocks) that
    counts its failures from Redis being away in `callcenter_redis_errors_total`."""
    from callcenter.metrics import CountingRedis  # imported here: metrics reads replies with `text`

    return CountingRedis.from_url(url)


def text(value: Any) -> str:
    """A Redis reply (bytes, str, number or None) as text; None is the empty string."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
