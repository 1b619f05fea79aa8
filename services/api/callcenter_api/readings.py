"""Reads and writes behind /v1/config: the hash `cc:{t}:config` (no SQL).

`cc:{t}:config` holds the call-handling parameters read by the Lua steps; a missing or empty value
means the default of `CONFIG_DEFAULTS` in `lua/common.lua`, which `CONFIG_DEFAULTS` below is read
from (one source: the Lua's table). The other reads are in `callcenter.store.reads`.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from callcenter.redis import text
from callcenter.store import Store
from callcenter_api.schemas import ConfigOut


def lua_config_defaults(source: str) -> dict[str, int | str]:
    """The `local CONFIG_DEFAULTS = { name = 30, name = 'text', ... }` table of common.lua."""
    block = re.search(r"^local CONFIG_DEFAULTS = \{(.*?)^\}", source, re.S | re.M)
    if block is None:
        raise RuntimeError("lua/common.lua has no CONFIG_DEFAULTS table")
    body = re.sub(r"--[^\n]*", "", block.group(1))
    items = [item.strip() for item in body.split(",") if item.strip()]
    out: dict[str, int | str] = {}
    for item in items:
        match = re.fullmatch(r"(\w+)\s*=\s*(?:(-?\d+)|'([^']*)')", item)
        if match is None:
            raise RuntimeError(f"lua/common.lua CONFIG_DEFAULTS: cannot read {item!r}")
        name, number, text = match.groups()
        out[name] = int(number) if number is not None else text
    return out


# the defaults the Lua steps use (the reference module's defaults)
CONFIG_DEFAULTS = lua_config_defaults(resources.files("callcenter.store.lua").joinpath("common.lua").read_text())
BOOLEAN_PARAMS = ("reject_on_no_agents", "internal_dispatching")


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


# -- config ----------------------------------------------------------------------------------------

def effective_config(raw: dict[str, str]) -> dict[str, int | str]:
    """What the Lua's cfg() sees: the stored value, or the default when missing, empty or (for a
    number) not a number."""
    out: dict[str, int | str] = {}
    for name, default in CONFIG_DEFAULTS.items():
        value = raw.get(name, "")
        if value == "":
            out[name] = default
        elif isinstance(default, int):
            try:
                out[name] = int(value)
            except ValueError:
                out[name] = default
        else:
            out[name] = value
    return out


async def read_config(store: Store) -> ConfigOut:
    values: dict[str, Any] = effective_config(_decode(await store.redis.hgetall(store.keys.config)))
    for name in BOOLEAN_PARAMS:
        values[name] = values[name] == 1
    return ConfigOut(**values)


async def patch_config(store: Store, changes: dict[str, Any]) -> ConfigOut:
    """Write the given values (booleans as 1/0); a None removes the value (back to the default)."""
    removed = [name for name, value in changes.items() if value is None]
    written = {name: int(value) if isinstance(value, bool) else value
               for name, value in changes.items() if value is not None}
    async with store.redis.pipeline(transaction=True) as pipe:
        if written:
            pipe.hset(store.keys.config, mapping=written)  # type: ignore[arg-type]
        if removed:
            pipe.hdel(store.keys.config, *removed)
        await pipe.execute()
    return await read_config(store)
