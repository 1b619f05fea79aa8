"""Typed read views of one tenant's Redis state, for the api (and anyone else who only reads).

Reads, never writes:
- the call-handling parameters `cc:{t}:config`, overlaid on the registry's defaults
  (`callcenter.store.config`);
- the agent hashes `cc:{t}:agent:<id>` and the call hashes `cc:{t}:call:<id>` (with `cc:{t}:calls`);
- `cc:{t}:flows`, the flow hashes and the queues `cc:{t}:queue:<flow>` / `cc:{t}:chatq:<flow>`;
- the counters `cc:{t}:stats` and `cc:{t}:stats:flow:<flow>` written by the Lua steps, the per-agent
  counters in the agent hashes, and the free / logged-in agent indexes of each skill;
- the one-minute service-level buckets `cc:{t}:sl:<flow>:<minute>` (kept 62 minutes).

Every view is a frozen dataclass whose field names are the api's response fields, so a response
model reads it with `from_attributes`. Numbers are decoded here, once; a hash field that is
missing or not a number reads as the default the Lua steps would use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from callcenter.redis import text
from callcenter.store.config import CALL_HANDLING, ConfigValue, Param
from callcenter.store.keys import Keys, tenant_totals

SL_WINDOWS_MIN = (1, 15, 60)
SL_FIELDS = ("offered", "answered", "answered_in_t", "abandoned", "abandoned_in_t")
AGENT_COUNTERS = ("state", "distributed", "answered", "answered_chats", "missed", "talk_ms")
DEFAULT_PRIORITY = 256  # a flow hash without a priority (the flow schema's default)


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def _opt_int(value: str | None) -> int | None:
    """A hash field that holds a timestamp or a count: None when missing, empty or not an integer."""
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _count(value: Any, default: int = 0) -> int:
    """A counter as the Lua's tonumber() sees it (floats truncated); `default` when missing or not a number."""
    raw = text(value)
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        try:
            return int(float(raw))
        except ValueError:
            return default


def config_value(param: Param, stored: str) -> ConfigValue:
    """What the Lua's cfg() sees: the stored value, or the default when it is missing, empty or (for a
    number) not an integer; a boolean is stored as 1/0."""
    if stored == "":
        return param.default
    if param.type is str:
        return stored
    try:
        number = int(stored)
    except ValueError:
        return param.default
    return number == 1 if param.type is bool else number


# -- live views --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AgentView:
    """The agent hash: definition and runtime state; `fields` holds every raw field."""

    agent_id: str
    state: str
    call: str | None
    logout_pending: bool
    pause_reason: str | None
    pause_pending: str | None
    state_since_ms: int | None
    idle_since_ms: int | None
    logged_in_ms: int | None
    wrapup_end_ms: int | None
    chats: int
    fields: dict[str, str]

    @classmethod
    def of(cls, agent_id: str, fields: dict[str, str]) -> AgentView | None:
        """The view of a decoded agent hash; None when the hash is empty (not in the cache)."""
        if not fields:
            return None
        return cls(agent_id=agent_id, state=fields.get("state") or "logged_out", call=fields.get("call") or None,
                   logout_pending=fields.get("logout_pending") == "1",
                   pause_reason=fields.get("pause_reason") or None,
                   pause_pending=fields.get("pause_pending") or None,
                   state_since_ms=_opt_int(fields.get("state_since")),
                   idle_since_ms=_opt_int(fields.get("idle_since")),
                   logged_in_ms=_opt_int(fields.get("logged_in_ms")),
                   wrapup_end_ms=_opt_int(fields.get("wrapup_end_ms")),
                   chats=_opt_int(fields.get("chats")) or 0, fields=fields)


@dataclass(frozen=True, slots=True)
class CallView:
    """The call hash (a live call, or an ended one while it is kept); `fields` is the raw hash."""

    call_id: str
    state: str
    flow: str
    caller: str
    agent_id: str | None
    edge: str | None
    received_ms: int | None
    media_type: str
    fields: dict[str, str]

    @classmethod
    def of(cls, call_id: str, fields: dict[str, str]) -> CallView | None:
        if not fields:
            return None
        return cls(call_id=call_id, state=fields.get("state", ""), flow=fields.get("flow", ""),
                   caller=fields.get("caller", ""), agent_id=fields.get("agent") or None,
                   edge=fields.get("edge") or None, received_ms=_opt_int(fields.get("received_ms")),
                   media_type=fields.get("media_type") or "audio", fields=fields)


@dataclass(frozen=True, slots=True)
class QueueView:
    """One flow's waiting calls and chats, next served first (at most `limit` ids of each)."""

    flow_id: str
    skill: str
    priority: int
    waiting: int
    calls: list[str]
    chats_waiting: int
    chats: list[str]


# -- statistics --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Counters:
    """The counters kept by the Lua steps and the live figures beside them (global or one flow)."""

    incalls: int
    distributed: int
    answered: int
    answered_chats: int
    abandoned: int
    overflowed: int
    overflowed_in: int
    onhold: int
    onhold_chats: int
    queued: int
    free_agents: int
    logged_agents: int
    awt_ms: int
    att_ms: int
    talk_n: int
    load: int

    @staticmethod
    def fields_of(stats: dict[str, str], queued: int, free: int, logged: int) -> dict[str, int]:
        """The counter values of a decoded stats hash, with the live figures given."""
        onhold = _count(stats.get("onhold"))
        return {
            "incalls": _count(stats.get("incalls")), "distributed": _count(stats.get("distributed")),
            "answered": _count(stats.get("answered")), "answered_chats": _count(stats.get("answered_chats")),
            "abandoned": _count(stats.get("abandoned")), "overflowed": _count(stats.get("overflowed")),
            "overflowed_in": _count(stats.get("overflowed_in")),
            "onhold": onhold, "onhold_chats": _count(stats.get("onhold_chats")), "queued": queued,
            "free_agents": free, "logged_agents": logged,
            "awt_ms": _ratio(_count(stats.get("awt_sum_ms")), _count(stats.get("awt_n"))),
            "att_ms": _ratio(_count(stats.get("talk_sum_ms")), _count(stats.get("talk_n"))),
            "talk_n": _count(stats.get("talk_n")),
            "load": 100 * (onhold + logged - free) // logged if logged > 0 else 0,
        }


@dataclass(frozen=True, slots=True)
class GlobalStats(Counters):
    """The counters of every flow together, and when they were last reset."""

    reset_ms: int | None


@dataclass(frozen=True, slots=True)
class FlowStats(Counters):
    """The counters of one flow."""

    flow_id: str
    skill: str
    etw_ms: int
    aht_ema_ms: int | None


@dataclass(frozen=True, slots=True)
class AgentStats:
    """One agent's counters and state."""

    agent_id: str
    state: str
    distributed: int
    answered: int
    answered_chats: int
    missed: int
    talk_ms: int
    att_ms: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Statistics globally, per flow and per agent."""

    global_: GlobalStats
    flows: list[FlowStats]
    agents: list[AgentStats]


def _ratio(total: int, n: int) -> int:
    return total // n if n > 0 else 0


# -- service level -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SlWindow:
    """Service level over one window of whole minutes."""

    minutes: int
    offered: int
    answered: int
    answered_in_t: int
    abandoned: int
    abandoned_in_t: int
    service_level_pct: float | None


@dataclass(frozen=True, slots=True)
class ServiceLevel:
    """One flow's service level over the last 1, 15 and 60 minutes."""

    flow_id: str
    threshold_s: int
    windows: list[SlWindow]


def service_level_pct(answered_in_t: int, offered: int, abandoned_in_t: int) -> float | None:
    """100 * answered_in_t / (offered - abandoned_in_t), capped at 100; None when nothing to measure."""
    denominator = offered - abandoned_in_t
    if denominator <= 0:
        return None
    return round(min(100.0, 100.0 * answered_in_t / denominator), 2)


# -- the reads ---------------------------------------------------------------------------------------

class Reads:
    """The read views of one tenant (`keys`) on `redis`."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def _members(self, key: str) -> list[str]:
        return sorted(text(m) for m in await self.redis.smembers(key))

    async def config(self) -> dict[str, ConfigValue]:
        """The effective call-handling parameters (a parameter never set has its default)."""
        stored = _fields(await self.redis.hgetall(self.keys.config))
        return {p.name: config_value(p, stored.get(p.name, "")) for p in CALL_HANDLING}

    async def flow_ids(self) -> list[str]:
        """Every flow of the cache, sorted."""
        return await self._members(self.keys.flows)

    async def agent_ids(self) -> list[str]:
        """Every agent of the cache, sorted."""
        return await self._members(self.keys.agents)

    async def has_flow(self, flow_id: str) -> bool:
        return bool(await self.redis.sismember(self.keys.flows, flow_id))

    async def agent(self, agent_id: str) -> AgentView | None:
        return AgentView.of(agent_id, _fields(await self.redis.hgetall(self.keys.agent(agent_id))))

    async def agents(self, agent_ids: list[str]) -> list[AgentView | None]:
        """The views of these agents, in this order (None for one the cache does not hold)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for agent_id in agent_ids:
                pipe.hgetall(self.keys.agent(agent_id))
            hashes = await pipe.execute()
        return [AgentView.of(agent_id, _fields(h)) for agent_id, h in zip(agent_ids, hashes, strict=True)]

    async def call(self, call_id: str) -> CallView | None:
        return CallView.of(call_id, _fields(await self.redis.hgetall(self.keys.call(call_id))))

    async def calls(self) -> list[CallView]:
        """Calls not yet ended, oldest first."""
        ids = await self._members(self.keys.calls)
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hgetall(self.keys.call(call_id))
            hashes = await pipe.execute()
        # a call may end between the two reads: its hash is then gone
        calls = [view for call_id, h in zip(ids, hashes, strict=True)
                 if (view := CallView.of(call_id, _fields(h))) is not None]
        return sorted(calls, key=lambda c: (c.received_ms or 0, c.call_id))

    async def queues(self, limit: int) -> list[QueueView]:
        """Every flow of the cache with its waiting calls and chats (at most `limit` ids of each)."""
        flow_ids = await self.flow_ids()
        async with self.redis.pipeline(transaction=False) as pipe:
            for flow_id in flow_ids:
                pipe.hmget(self.keys.flow(flow_id), ["skill", "priority"])
                for queue in (self.keys.queue(flow_id), self.keys.chat_queue(flow_id)):
                    pipe.zcard(queue)
                    pipe.zrange(queue, 0, limit - 1)
            raw = await pipe.execute()
        out = []
        for i, flow_id in enumerate(flow_ids):
            (skill, priority), waiting, calls, chats_waiting, chats = raw[5 * i:5 * i + 5]
            prio = _opt_int(text(priority))
            out.append(QueueView(flow_id=flow_id, skill=text(skill),
                                 priority=DEFAULT_PRIORITY if prio is None else prio,
                                 waiting=int(waiting), calls=[text(c) for c in calls] if limit else [],
                                 chats_waiting=int(chats_waiting),
                                 chats=[text(c) for c in chats] if limit else []))
        return out

    async def stats(self) -> Stats:
        """Counters since the last reset and live figures: in total, per flow and per agent."""
        keys = self.keys
        flow_ids = await self.flow_ids()
        agent_ids = await self.agent_ids()
        # the flows whose counters make the totals, deleted ones included (store.keys)
        counted = sorted({text(f) for f in await self.redis.sunion([keys.statflows, keys.flows])} - set(flow_ids))
        async with self.redis.pipeline(transaction=True) as pipe:  # one consistent snapshot
            pipe.hgetall(keys.stats)
            for flow_id in counted:
                pipe.hgetall(keys.flow_stats(flow_id))
            for flow_id in flow_ids:
                pipe.hget(keys.flow(flow_id), "skill")
                pipe.hgetall(keys.flow_stats(flow_id))
                pipe.zcard(keys.queue(flow_id))
                pipe.zcard(keys.chat_queue(flow_id))
            for agent_id in agent_ids:
                pipe.hmget(keys.agent(agent_id), list(AGENT_COUNTERS))
            raw = await pipe.execute()
        global_raw, others, raw = _fields(raw[0]), [_fields(h) for h in raw[1:1 + len(counted)]], raw[1 + len(counted):]
        flow_rows = [(flow_id, text(raw[4 * i]), _fields(raw[4 * i + 1]), int(raw[4 * i + 2]) + int(raw[4 * i + 3]))
                     for i, flow_id in enumerate(flow_ids)]
        agent_rows = raw[4 * len(flow_ids):]

        skills = sorted({skill for _, skill, _, _ in flow_rows if skill})
        async with self.redis.pipeline(transaction=False) as pipe:
            for skill in skills:
                pipe.zcard(keys.skill_free(skill))
                pipe.scard(keys.skill_logged(skill))
            counts = await pipe.execute()
        free_by_skill = {skill: int(counts[2 * i]) for i, skill in enumerate(skills)}
        logged_by_skill = {skill: int(counts[2 * i + 1]) for i, skill in enumerate(skills)}

        flows = []
        for flow_id, skill, stats, queued in flow_rows:
            free, logged = free_by_skill.get(skill, 0), logged_by_skill.get(skill, 0)
            counters = Counters.fields_of(stats, queued, free, logged)
            aht = _count(stats.get("aht_ema_ms"), -1)
            flows.append(FlowStats(flow_id=flow_id, skill=skill, **counters,
                                   etw_ms=counters["att_ms"] * queued // logged if logged > 0 else 0,
                                   aht_ema_ms=aht if aht >= 0 else None))

        agents, free_total, logged_total = [], 0, 0
        for agent_id, row in zip(agent_ids, agent_rows, strict=True):
            state, distributed, answered, answered_chats, missed, talk_ms = row
            state_text = text(state) or "logged_out"
            free_total += state_text == "free"
            logged_total += state_text != "logged_out"
            answered_n, chats_n, talk = _count(answered), _count(answered_chats), _count(talk_ms)
            agents.append(AgentStats(agent_id=agent_id, state=state_text, distributed=_count(distributed),
                                     answered=answered_n, answered_chats=chats_n, missed=_count(missed),
                                     talk_ms=talk, att_ms=_ratio(talk, answered_n + chats_n)))

        reset_ms = _count(global_raw.get("reset_ms"), -1)
        summed = tenant_totals([*(stats for _, _, stats, _ in flow_rows), *others])
        totals = GlobalStats(**Counters.fields_of(summed, sum(f.queued for f in flows), free_total, logged_total),
                             reset_ms=reset_ms if reset_ms >= 0 else None)
        return Stats(global_=totals, flows=flows, agents=agents)

    async def service_level(self, flow_ids: list[str], now_ms: int) -> list[ServiceLevel]:
        """Per flow, the 1, 15 and 60 minute windows up to `now_ms`; T is the flow's sl_threshold_s,
        else the global one (cc:{t}:config)."""
        default_threshold_s = int((await self.config())["sl_threshold_s"])
        minute = now_ms // 60_000
        span = max(SL_WINDOWS_MIN)
        async with self.redis.pipeline(transaction=True) as pipe:
            for flow_id in flow_ids:
                pipe.hget(self.keys.flow(flow_id), "sl_threshold_s")
                for back in range(span):  # newest bucket first
                    pipe.hmget(self.keys.sl(flow_id, minute - back), list(SL_FIELDS))
            raw = await pipe.execute()
        out = []
        per_flow = span + 1
        for i, flow_id in enumerate(flow_ids):
            threshold = _count(raw[i * per_flow])
            if threshold <= 0:
                threshold = default_threshold_s
            buckets = [[_count(v) for v in bucket] for bucket in raw[i * per_flow + 1:(i + 1) * per_flow]]
            windows = []
            for minutes in SL_WINDOWS_MIN:
                sums = dict(zip(SL_FIELDS, (sum(col) for col in zip(*buckets[:minutes], strict=True)), strict=True))
                windows.append(SlWindow(minutes=minutes, **sums,
                                        service_level_pct=service_level_pct(sums["answered_in_t"], sums["offered"],
                                                                            sums["abandoned_in_t"])))
            out.append(ServiceLevel(flow_id=flow_id, threshold_s=threshold, windows=windows))
        return out
