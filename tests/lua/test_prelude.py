"""The generated Lua prelude agrees with Python: run on the real redis-server, it returns RC, the
key names, EVENT_V and the config defaults, compared here with store.codes, store.keys, the event
registry and store.config."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from callcenter.contract.types import TYPES
from callcenter.store.codes import RC
from callcenter.store.config import CALL_HANDLING
from callcenter.store.keys import FAMILIES, NAMES, Keys
from callcenter.store.prelude import prelude
from callcenter.store.scripts import load_source

ARGS = ("x1", "x2")


async def _run(redis: aioredis.Redis, lua: str, *argv: Any) -> Any:
    raw = await redis.eval(lua, 1, "cc:{t}:events", 1_700_000_000_000, *argv)
    return json.loads(raw)


async def test_prelude_constants_agree_with_python(redis: aioredis.Redis) -> None:
    calls = []
    for family, template in FAMILIES.items():
        arity = len(set(re.findall(r"\{(\d)\}", template)))
        calls.append(f"{family} = k_{family}({', '.join(repr(a) for a in ARGS[:arity])})")
    lua = prelude() + (
        "return cjson.encode({ rc = RC, k = K, now = NOW, v = EVENT_V, defaults = CONFIG_DEFAULTS, "
        f"families = {{ {', '.join(calls)} }} }})"
    )
    out = await _run(redis, lua)
    keys = Keys("t")
    assert out["rc"] == {rc.name: rc.value for rc in RC}
    assert out["k"] == {name: getattr(keys, name) for name in NAMES}
    assert out["families"] == {
        family: getattr(keys, family)(*ARGS[:len(set(re.findall(r"\{(\d)\}", template)))])
        for family, template in FAMILIES.items()}
    assert out["now"] == 1_700_000_000_000
    assert out["v"] == {name: t.version for name, t in TYPES.items()}
    # a bool is stored (and defaulted) as 1/0 in the config hash
    assert out["defaults"] == {p.name: int(p.default) if p.type is bool else p.default for p in CALL_HANDLING}


async def test_cfg_falls_back_to_the_registry_defaults(redis: aioredis.Redis) -> None:
    """`cfg()` of lib/config.lua: the stored value, else the registry's default (numbers as numbers)."""
    await redis.hset("cc:{t}:config", mapping={"ring_timeout_s": "7", "wrapup_s": "", "queue_pos_param": "pos"})
    names = [p.name for p in CALL_HANDLING]
    lua = prelude() + resources.files("callcenter.store.lua").joinpath("lib/config.lua").read_text() + (
        "local out = {} for _, name in ipairs(cjson.decode(ARGV[2])) do out[name] = cfg(name) end "
        "return cjson.encode(out)")
    out = await _run(redis, lua, json.dumps(names))
    expected = {p.name: int(p.default) if p.type is bool else p.default for p in CALL_HANDLING}
    assert out == {**expected, "ring_timeout_s": 7, "queue_pos_param": "pos"}


def test_a_script_loads_only_the_library_it_needs() -> None:
    """flow_delete needs no library; agent_delete only core (and the config it uses)."""
    assert "local function cfg(" not in load_source("flow_delete")
    source = load_source("agent_delete")
    assert "local function hgetall(" in source and "local function route_call(" not in source
    assert source.startswith(prelude())
