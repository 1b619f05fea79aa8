"""The Lua tests' fixture: `h`, a Harness on the session's redis-server (flushed for each test). A
module whose calls need other tenant settings defines its own `h` with `Harness.configured`."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from lua_harness import Harness


@pytest.fixture
async def h(redis: aioredis.Redis) -> Harness:
    return Harness(redis)
