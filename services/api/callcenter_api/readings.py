"""Reads behind /v1/config, /v1/stats and /v1/service-level: Redis hashes and indexes, no SQL.

- `cc:{t}:config`: call-handling parameters read by the Lua steps; a missing or empty value means
  the default of `CONFIG_DEFAULTS` in `lua/common.lua`, which `CONFIG_DEFAULTS` below is read from
  (one source: the Lua's table).
- `cc:{t}:stats` and `cc:{t}:stats:flow:<flow>`: counters written by the Lua steps; the agent hashes
  carry the per-agent counters.
- `cc:{t}:sl:<flow>:<minute>`: one-minute service-level buckets (minute = floor(ms / 60000), kept 62
  minutes).
"""

from __future__ import annotations

import re
from typing import Any

from redis.asyncio import Redis

from callcenter.store import Store
from callcenter.store.config import lua_defaults_table
from callcenter_api.schemas import (
    AgentStats,
    ConfigOut,
    FlowStats,
    GlobalStats,
    ServiceLevelOut,
    SlWindow,
    StatsOut,
)


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
CONFIG_DEFAULTS = lua_config_defaults(lua_defaults_table())
BOOLEAN_PARAMS = ("reject_on_no_agents", "internal_dispatching")
SL_WINDOWS_MIN = (1, 15, 60)
SL_FIELDS = ("offered", "answered", "answered_in_t", "abandoned", "abandoned_in_t")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any, default: int = 0) -> int:
    if value is None or value == b"" or value == "":
        return default
    try:
        return int(_text(value))
    except ValueError:
        try:
            return int(float(_text(value)))
        except ValueError:
            return default


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


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


# -- statistics ------------------------------------------------------------------------------------

def _ratio(total: int, n: int) -> int:
    return total // n if n > 0 else 0


def _load(onhold: int, logged: int, free: int) -> int:
    return 100 * (onhold + logged - free) // logged if logged > 0 else 0


def _counters(stats: dict[str, str], queued: int, free: int, logged: int) -> dict[str, int]:
    onhold = _int(stats.get("onhold"))
    return {
        "incalls": _int(stats.get("incalls")), "distributed": _int(stats.get("distributed")),
        "answered": _int(stats.get("answered")), "answered_chats": _int(stats.get("answered_chats")),
        "abandoned": _int(stats.get("abandoned")), "overflowed": _int(stats.get("overflowed")),
        "onhold": onhold, "onhold_chats": _int(stats.get("onhold_chats")), "queued": queued,
        "free_agents": free, "logged_agents": logged,
        "awt_ms": _ratio(_int(stats.get("awt_sum_ms")), _int(stats.get("awt_n"))),
        "att_ms": _ratio(_int(stats.get("talk_sum_ms")), _int(stats.get("talk_n"))),
        "talk_n": _int(stats.get("talk_n")),
        "load": _load(onhold, logged, free),
    }


async def _members(redis: Redis, key: str) -> list[str]:
    return sorted(_text(m) for m in await redis.smembers(key))


async def read_stats(store: Store) -> StatsOut:
    redis, keys = store.redis, store.keys
    flow_ids = await _members(redis, keys.flows)
    agent_ids = await _members(redis, keys.agents)
    async with redis.pipeline(transaction=True) as pipe:  # one consistent snapshot
        pipe.hgetall(keys.prefix + "stats")
        for flow_id in flow_ids:
            pipe.hget(keys.flow(flow_id), "skill")
            pipe.hgetall(keys.prefix + f"stats:flow:{flow_id}")
            pipe.zcard(keys.queue(flow_id))
            pipe.zcard(keys.chat_queue(flow_id))
        for agent_id in agent_ids:
            pipe.hmget(keys.agent(agent_id), ["state", "distributed", "answered", "answered_chats", "missed",
                                              "talk_ms"])
        raw = await pipe.execute()
    global_raw, raw = _decode(raw[0]), raw[1:]
    flow_rows = [(flow_id, _text(raw[4 * i] or b""), _decode(raw[4 * i + 1]), int(raw[4 * i + 2]) + int(raw[4 * i + 3]))
                 for i, flow_id in enumerate(flow_ids)]
    agent_rows = raw[4 * len(flow_ids):]

    skills = sorted({skill for _, skill, _, _ in flow_rows if skill})
    async with redis.pipeline(transaction=False) as pipe:
        for skill in skills:
            pipe.zcard(keys.skill_free(skill))
            pipe.scard(keys.skill_logged(skill))
        counts = await pipe.execute()
    free_by_skill = {skill: int(counts[2 * i]) for i, skill in enumerate(skills)}
    logged_by_skill = {skill: int(counts[2 * i + 1]) for i, skill in enumerate(skills)}

    flows = []
    for flow_id, skill, stats, queued in flow_rows:
        free, logged = free_by_skill.get(skill, 0), logged_by_skill.get(skill, 0)
        counters = _counters(stats, queued, free, logged)
        aht = _int(stats.get("aht_ema_ms"), -1)
        flows.append(FlowStats(flow_id=flow_id, skill=skill, **counters,
                               etw_ms=counters["att_ms"] * queued // logged if logged > 0 else 0,
                               aht_ema_ms=aht if aht >= 0 else None))

    agents, free_total, logged_total = [], 0, 0
    for agent_id, row in zip(agent_ids, agent_rows, strict=True):
        state, distributed, answered, answered_chats, missed, talk_ms = row
        state_text = _text(state) if state else "logged_out"
        free_total += state_text == "free"
        logged_total += state_text != "logged_out"
        answered_n, chats_n, talk = _int(answered), _int(answered_chats), _int(talk_ms)
        agents.append(AgentStats(agent_id=agent_id, state=state_text, distributed=_int(distributed),
                                 answered=answered_n, answered_chats=chats_n, missed=_int(missed), talk_ms=talk,
                                 att_ms=_ratio(talk, answered_n + chats_n)))

    reset_ms = _int(global_raw.get("reset_ms"), -1)
    totals = GlobalStats(**_counters(global_raw, sum(f.queued for f in flows), free_total, logged_total),
                         reset_ms=reset_ms if reset_ms >= 0 else None)
    return StatsOut(global_=totals, flows=flows, agents=agents)


# -- service level ---------------------------------------------------------------------------------

def service_level_pct(answered_in_t: int, offered: int, abandoned_in_t: int) -> float | None:
    """100 * answered_in_t / (offered - abandoned_in_t), capped at 100; None when nothing to measure."""
    denominator = offered - abandoned_in_t
    if denominator <= 0:
        return None
    return round(min(100.0, 100.0 * answered_in_t / denominator), 2)


async def read_service_level(store: Store, flow_ids: list[str], now_ms: int) -> list[ServiceLevelOut]:
    redis, keys = store.redis, store.keys
    minute = now_ms // 60_000
    span = max(SL_WINDOWS_MIN)
    config = effective_config(_decode(await redis.hgetall(keys.config)))
    async with redis.pipeline(transaction=True) as pipe:
        for flow_id in flow_ids:
            pipe.hget(keys.flow(flow_id), "sl_threshold_s")
            for back in range(span):  # newest bucket first
                pipe.hmget(keys.prefix + f"sl:{flow_id}:{minute - back}", list(SL_FIELDS))
        raw = await pipe.execute()
    out = []
    per_flow = span + 1
    for i, flow_id in enumerate(flow_ids):
        threshold = _int(raw[i * per_flow])
        if threshold <= 0:
            threshold = int(config["sl_threshold_s"])
        buckets = [[_int(v) for v in bucket] for bucket in raw[i * per_flow + 1:(i + 1) * per_flow]]
        windows = []
        for minutes in SL_WINDOWS_MIN:
            sums = dict(zip(SL_FIELDS, (sum(col) for col in zip(*buckets[:minutes], strict=True)), strict=True))
            windows.append(SlWindow(minutes=minutes, **sums,
                                    service_level_pct=service_level_pct(sums["answered_in_t"], sums["offered"],
                                                                        sums["abandoned_in_t"])))
        out.append(ServiceLevelOut(flow_id=flow_id, threshold_s=threshold, windows=windows))
    return out
