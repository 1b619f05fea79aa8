"""The two writes of `cc:{t}:config` (the call-handling parameters the Lua steps read).

- `seed_config`: at start-up, the api and the dispatcher write the parameters their environment
  sets explicitly (`CC_WRAPUP_S`, ... of `DispatchSettings`), and only when the hash does not exist
  yet. A config already there (seeded before, or changed through the api) is never overwritten.
- `patch_config`: the api's PATCH /v1/config, the only writer at run time.

Reads nothing else; the reads of the hash are in `callcenter.store.reads`. Values are stored as the
Lua reads them: numbers and text as they are, booleans as 1/0; no field means the default.
"""

from __future__ import annotations

from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import WatchError

from callcenter.settings import DispatchSettings
from callcenter.store.config import PARAMS, ConfigValue
from callcenter.store.keys import Keys


def _stored(value: ConfigValue) -> int | str:
    return int(value) if isinstance(value, bool) else value


def explicit_config(settings: DispatchSettings) -> dict[str, ConfigValue]:
    """The call-handling parameters the environment sets explicitly (a default is not a choice)."""
    return {name: getattr(settings, name) for name in PARAMS if name in settings.model_fields_set}


async def seed_config(redis: Redis, keys: Keys, values: Mapping[str, ConfigValue]) -> bool:
    """Write `values` into `cc:{t}:config` if, and only if, that hash does not exist; True when written.

    WATCH makes the check and the write one step: of an api and a dispatcher starting together,
    one seeds and the other sees the hash and leaves it alone."""
    if not values:
        return False
    mapping = {name: _stored(value) for name, value in values.items()}
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.config)
                if await pipe.exists(keys.config):
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                pipe.hset(keys.config, mapping=mapping)  # type: ignore[arg-type]
                await pipe.execute()
                return True
            except WatchError:  # written meanwhile: look again (it now exists)
                continue


async def patch_config(redis: Redis, keys: Keys, changes: Mapping[str, ConfigValue | None]) -> None:
    """Write the given values; a None removes one (back to the default). One transaction."""
    removed = [name for name, value in changes.items() if value is None]
    written = {name: _stored(value) for name, value in changes.items() if value is not None}
    async with redis.pipeline(transaction=True) as pipe:
        if written:
            pipe.hset(keys.config, mapping=written)  # type: ignore[arg-type]
        if removed:
            pipe.hdel(keys.config, *removed)
        await pipe.execute()
