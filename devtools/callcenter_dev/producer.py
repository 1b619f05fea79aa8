"""Appends contract-checked entries to a stream, for tests and benchmarks.

Writes: any stream it is given (XADD of `callcenter.contract.codec.encode`). No service uses it: the
sip-edge publishes its reports with its own pipelined XADD, and the Lua steps append events and
commands themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from callcenter.contract.codec import encode
from callcenter.redis import text


class Producer:
    """Appends contract-checked entries to streams."""

    def __init__(self, redis: Redis, maxlen: int | None = None) -> None:
        self.redis = redis
        self.maxlen = maxlen

    async def publish(self, stream: str, type_name: str, data: Mapping[str, Any]) -> str:
        entry_id = await self.redis.xadd(stream, encode(type_name, data),  # type: ignore[arg-type]
                                         maxlen=self.maxlen, approximate=True)
        return text(entry_id)
