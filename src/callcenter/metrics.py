"""Prometheus metrics of every service: what each process counts, and the tenant's state read
from Redis at scrape time.

Reads: the counters the services bump (below), and, for `TenantState.refresh` (the api's
/metrics only), Redis: the flows and their queues, the agents' states, the edges' heartbeats and
the consumer groups of the tenant's streams. Writes: nothing; `exposition()` is the text format
served on /metrics (the api on its own port, every other service on its health listener).

Cost: a process's own counters are plain prometheus-client metrics, except the sip-edge's
per-message counts (`SIP`), which are dict increments in the edge's SIP turns (no label lookup, no lock)
turned into metric families only when scraped. What lives in Redis is never counted per event: one
scrape reads it in two pipelined round trips, bounded by `MAX_FLOWS` and `MAX_AGENTS`, and only
the api reads it (one copy of each figure, however many replicas of the other services run).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from callcenter.redis import REDIS_DOWN, closed_under_send, text
from callcenter.redis_durability import WaitingTransaction
from callcenter.redis_topology import stream_read_keys
from callcenter.store.config import PARAMS
from callcenter.store.keys import Keys, tenant_totals

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# no `*_created` series: they double the exposition and no rule or panel reads them
disable_created_metrics()  # type: ignore[no-untyped-call]
# one registry per process: a service's own metrics and the process's CPU/memory
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

# -- what each process counts ------------------------------------------------------------------------

DEAD_LETTERS = Counter("callcenter_dead_letters", "Stream entries this process dead-lettered, by stream",
                       ["stream"], registry=REGISTRY)
STREAM_ENTRIES = Counter("callcenter_stream_entries_handled", "Stream entries this process handled and "
                         "acknowledged, by stream and consumer group", ["stream", "group"], registry=REGISTRY)
EDGES_LOST = Counter("callcenter_edges_lost", "sip-edges this dispatcher declared lost (heartbeat lapsed: "
                     "their calls ended with edge_lost)", registry=REGISTRY)
REDIS_ERRORS = Counter("callcenter_redis_errors", "Redis commands or pipelines that failed because Redis "
                       "was unreachable or timed out", registry=REGISTRY)
REDIS_WAIT_MISSING = Counter("callcenter_redis_wait_missing", "Replicas that had not acknowledged a write when "
                             "its WAIT (CC_REDIS_WAIT_REPLICAS) timed out, by path: edge_publish, "
                             "dispatcher_ack", ["path"], registry=REGISTRY)
EDGE_APPLIED = Counter("callcenter_edge_steps_applied", "Reports that free an agent (a call's end) the "
                       "sip-edge appended and applied in one step (CC_APPLY_CALL_ENDS), by result: OK, DUPLICATE, "
                       "OUT_OF_ORDER (left to the dispatchers), ..., ERROR (appended again by XADD)", ["rc"],
                       registry=REGISTRY)
EDGE_LEFT = Counter("callcenter_edge_call_ends_left", "Reports of a call's end the sip-edge appended by XADD "
                    "for the dispatchers to apply, because its process was busier than "
                    "CC_APPLY_CALL_ENDS_MAX_CPU", registry=REGISTRY)
# decision latency: a report's stream entry (Redis time at XADD) to its atomic step applied; and a
# ring decision (the ring command's entry: the step that gave a free agent the call) to the edge
# handing the ring to its SIP stack. An agent freed by wrap-up's end is seen by the timer loop
# when that timer is due (it sleeps until the first due timer); one freed by login/unpause is
# offered in that same step.
DISPATCH_LATENCY = Histogram("callcenter_dispatch_latency_seconds", "Dispatch latency by path: "
                             "report_to_decision (dispatcher), agent_free_to_ring (sip-edge)", ["path"],
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
                             registry=REGISTRY)


_LATENCY_BY_PATH: dict[str, Any] = {}


def observe_since_entry(path: str, entry_id: str, now_s: float | None = None) -> None:
    """Observe the time from a stream entry's id (its Redis time in ms) until now on `path`."""
    try:
        written_ms = int(entry_id.split("-", 1)[0])
    except ValueError:
        return
    now = time.time() if now_s is None else now_s
    child = _LATENCY_BY_PATH.get(path)
    if child is None:  # a label lookup takes a lock and builds a tuple: done once per path
        child = _LATENCY_BY_PATH[path] = DISPATCH_LATENCY.labels(path)
    child.observe(max(0.0, now - written_ms / 1000))


# -- the sip-edge's per-message counts ---------------------------------------------------------------

# methods counted under their own name; any other goes under OTHER (a request line's method is
# the sender's to choose: the label set stays bounded)
SIP_METHODS = (b"INVITE", b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"UPDATE", b"INFO", b"PRACK", b"REFER",
               b"NOTIFY", b"SUBSCRIBE", b"MESSAGE", b"REGISTER", b"PUBLISH")
OTHER = b"OTHER"


class SipCounts(Collector):
    """SIP requests and responses in and out, and retransmissions, counted as the sip-edge reads and sends.

    `request_in(data)` and friends cost a slice and one dict increment: the dicts are pre-filled
    with every method and status code, so the hot path takes no lock and builds no label. Reading
    an int from a dict another thread increments is safe under the GIL; a scrape may miss the
    increment in flight, never corrupt one.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, bytes], int] = {}
        self.responses: dict[tuple[str, bytes], int] = {}
        for direction in ("in", "out"):
            self.requests.update({(direction, m): 0 for m in (*SIP_METHODS, OTHER)})
            self.responses.update({(direction, str(code).encode()): 0 for code in range(100, 700)})
            self.responses[(direction, OTHER)] = 0
        self.retransmissions = {"in": 0, "out": 0}

    def message(self, direction: str, data: bytes) -> None:
        """Count one SIP message (its raw bytes) sent ("out") or received ("in")."""
        if data[:8] == b"SIP/2.0 ":
            try:
                self.responses[(direction, data[8:11])] += 1
            except KeyError:
                self.responses[(direction, OTHER)] += 1
        else:
            try:
                self.requests[(direction, data[:data.find(b" ")])] += 1
            except KeyError:
                self.requests[(direction, OTHER)] += 1

    def retransmission(self, direction: str) -> None:
        self.retransmissions[direction] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("callcenter_sip_requests", "SIP requests by direction and method",
                                       labels=["direction", "method"])
        for (direction, method), n in list(self.requests.items()):
            if n:
                requests.add_metric([direction, method.decode()], n)
        responses = CounterMetricFamily("callcenter_sip_responses", "SIP responses by direction and status code",
                                        labels=["direction", "code"])
        for (direction, code), n in list(self.responses.items()):
            if n:
                responses.add_metric([direction, code.decode(errors="replace")], n)
        retrans = CounterMetricFamily("callcenter_sip_retransmissions", "SIP retransmissions: requests the edge "
                                      "sent again (out), retransmitted requests it answered from its cache (in)",
                                      labels=["direction"])
        for direction, n in self.retransmissions.items():
            retrans.add_metric([direction], n)
        yield from (requests, responses, retrans)


SIP = SipCounts()
REGISTRY.register(SIP)


# -- the tenant's state in Redis, read at scrape time (the api) ----------------------------------------

MAX_FLOWS = 1000
MAX_AGENTS = 10_000
# the oldest wait of a flow is taken among the first calls in line (its queue is ordered by
# arrival less priority: without priorities the first is the oldest)
HEAD_OF_LINE = 20


@dataclass
class Snapshot:
    """One scrape's reading of the tenant's state."""

    tenant: str
    queue_calls: dict[str, int] = field(default_factory=dict)
    oldest_wait_s: dict[str, float] = field(default_factory=dict)
    sl_threshold_s: dict[str, float] = field(default_factory=dict)
    logged_in: dict[str, int] = field(default_factory=dict)
    agents: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    live_calls: int = 0
    edge_age_s: dict[str, float] = field(default_factory=dict)
    groups: list[tuple[str, str, int, int]] = field(default_factory=list)  # stream, group, lag, pending
    dead_letters: int = 0
    ok: bool = True


# the tenant's counters (summed over its flows) that count calls, by the outcome they name
CALL_COUNTERS = {"incalls": "arrived", "answered": "answered", "abandoned": "abandoned",
                 "overflowed": "overflowed", "distributed": "distributed"}


class TenantState(Collector):
    """The tenant's live figures from Redis. `refresh()` (async) reads them; `collect()` gives the
    last reading, so the scrape itself stays synchronous as prometheus-client wants."""

    def __init__(self, redis: Redis, tenant: str) -> None:
        self.redis = redis
        self.keys = Keys(tenant)
        self.last = Snapshot(tenant, ok=False)

    async def refresh(self, now_s: float | None = None) -> Snapshot:
        try:
            self.last = await self._read(time.time() if now_s is None else now_s)
        except Exception:  # a scrape must answer: the error is counted and the figures left out
            REDIS_ERRORS.inc()
            self.last = Snapshot(self.keys.tenant, ok=False)
        return self.last

    async def _read(self, now_s: float) -> Snapshot:
        keys = self.keys
        snap = Snapshot(keys.tenant)
        flows = sorted(text(f) for f in await self.redis.srandmember(keys.flows, MAX_FLOWS) or [])
        agents = [text(a) for a in await self.redis.srandmember(keys.agents, MAX_AGENTS) or []]
        command_streams = [keys.commands(text(e)) for e in await self.redis.zrange(keys.edges, 0, -1)]
        # the tenant's counters are the sum of its flows' (store.keys.tenant_totals)
        counted = sorted(text(f) for f in await self.redis.sunion([keys.statflows, keys.flows]) or [])
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.config, "sl_threshold_s")
            for flow in flows:
                pipe.zcard(keys.queue(flow))
                pipe.zrange(keys.queue(flow), 0, HEAD_OF_LINE - 1)
                pipe.hmget(keys.flow(flow), ["skill", "sl_threshold_s"])
            for agent in agents:
                pipe.hget(keys.agent(agent), "state")
            for flow in counted:
                pipe.hgetall(keys.flow_stats(flow))
            pipe.scard(keys.calls)
            pipe.zrange(keys.edges, 0, -1, withscores=True)
            pipe.xlen(keys.dead)
            for stream in (keys.reports, keys.events, *command_streams):
                pipe.xinfo_groups(stream)
            raw = await pipe.execute(raise_on_error=False)
        it = iter(raw)
        heads: dict[str, list[str]] = {}
        skills: dict[str, str] = {}
        # a flow's own service-level threshold, else the tenant's (the same rule as the api's
        # service-level figures, callcenter.store.reads)
        default_threshold = _positive(next(it)) or float(PARAMS["sl_threshold_s"].default)
        for flow in flows:
            snap.queue_calls[flow] = int(next(it))
            heads[flow] = [text(c) for c in next(it)]
            skill, threshold = next(it)
            skills[flow] = text(skill)
            snap.sl_threshold_s[flow] = _positive(threshold) or default_threshold
        for _agent in agents:
            state = text(next(it)) or "logged_out"
            snap.agents[state] = snap.agents.get(state, 0) + 1
        stats = tenant_totals([{text(k): text(v) for k, v in (next(it) or {}).items()} for _ in counted])
        snap.calls = {label: int(stats.get(name) or 0) for name, label in CALL_COUNTERS.items()}
        snap.live_calls = int(next(it))
        snap.edge_age_s = {text(edge): max(0.0, now_s - float(ms) / 1000) for edge, ms in next(it)}
        snap.dead_letters = int(next(it))
        for stream in (keys.reports, keys.events, *command_streams):
            groups = next(it)
            if isinstance(groups, Exception):  # a stream not created yet
                continue
            for g in groups:
                g = {text(k): v for k, v in g.items()}
                lag = g.get("lag")
                snap.groups.append((stream.removeprefix(keys.prefix), text(g.get("name")),
                                    -1 if lag is None else int(lag), int(g.get("pending") or 0)))
        await self._second_round(snap, heads, skills, now_s)
        return snap

    async def _second_round(self, snap: Snapshot, heads: dict[str, list[str]], skills: dict[str, str],
                            now_s: float) -> None:
        """The arrival times of the calls at the head of each queue, and the agents logged in per skill."""
        keys = self.keys
        used_skills = sorted({s for s in skills.values() if s})
        async with self.redis.pipeline(transaction=False) as pipe:
            for calls in heads.values():
                for call in calls:
                    pipe.hget(keys.call(call), "received_ms")
            for skill in used_skills:
                pipe.scard(keys.skill_logged(skill))
            raw = iter(await pipe.execute())
        for flow, calls in heads.items():
            arrivals = [int(v) for v in (next(raw) for _ in calls) if v]
            snap.oldest_wait_s[flow] = max(0.0, now_s - min(arrivals) / 1000) if arrivals else 0.0
        logged = {skill: int(next(raw)) for skill in used_skills}
        snap.logged_in = {flow: logged.get(skill, 0) for flow, skill in skills.items()}

    def collect(self) -> Iterator[Metric]:
        s = self.last
        up = GaugeMetricFamily("callcenter_tenant_scrape_ok", "1 when the last read of the tenant's state in "
                               "Redis succeeded", labels=["tenant"])
        up.add_metric([s.tenant], 1 if s.ok else 0)
        yield up
        if not s.ok:
            return
        yield _gauges("callcenter_queue_calls", "Calls waiting in a flow's queue", "flow", s.queue_calls)
        yield _gauges("callcenter_queue_oldest_wait_seconds", "Wait so far of the oldest call at the head of a "
                      "flow's queue (0 when empty)", "flow", s.oldest_wait_s)
        yield _gauges("callcenter_flow_sl_threshold_seconds", "A flow's service-level threshold T (its own "
                      "sl_threshold_s, else the tenant's): the queue wait the alert compares with", "flow",
                      s.sl_threshold_s)
        yield _gauges("callcenter_flow_agents_logged_in", "Agents logged in with the skill a flow needs",
                      "flow", s.logged_in)
        yield _gauges("callcenter_agents", "Agents by state", "state", s.agents)
        calls = CounterMetricFamily("callcenter_calls", "Calls by outcome since the statistics were last reset "
                                    "(cc:{t}:stats, kept by the dispatcher's atomic steps)", labels=["outcome"])
        for outcome, n in s.calls.items():
            calls.add_metric([outcome], n)
        yield calls
        live = GaugeMetricFamily("callcenter_calls_live", "Calls not yet ended")
        live.add_metric([], s.live_calls)
        yield live
        yield _gauges("callcenter_edge_heartbeat_age_seconds", "Seconds since each sip-edge's last heartbeat",
                      "edge", s.edge_age_s)
        lag = GaugeMetricFamily("callcenter_stream_lag", "Entries of a stream not yet delivered to a consumer "
                                "group (-1: Redis cannot tell)", labels=["stream", "group"])
        pending = GaugeMetricFamily("callcenter_stream_pending", "Entries delivered to a consumer group and not "
                                    "yet acknowledged", labels=["stream", "group"])
        for stream, group, n_lag, n_pending in s.groups:
            lag.add_metric([stream, group], n_lag)
            pending.add_metric([stream, group], n_pending)
        yield lag
        yield pending
        dead = GaugeMetricFamily("callcenter_dead_letter_entries", "Entries in the dead-letter stream cc:{t}:dead")
        dead.add_metric([], s.dead_letters)
        yield dead


def _positive(value: Any) -> float:
    """A stored number of seconds, 0 when unset or not a positive number."""
    try:
        number = float(text(value))
    except ValueError:
        return 0.0
    return number if number > 0 else 0.0


def _gauges(name: str, documentation: str, label: str, values: dict[str, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class CountingRedis(Redis):
    """A client that counts each command and pipeline that failed with Redis unreachable
    (`REDIS_ERRORS`); the error goes on to the caller unchanged. `callcenter.redis.connect` makes it."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except REDIS_DOWN:
            REDIS_ERRORS.inc()
            raise

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> CountingPipeline:
        return CountingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class CountingPipeline(WaitingTransaction):
    """A pipeline of `CountingRedis`: counts a failed `execute` the same way (and, as a transaction,
    can WAIT for replicas after its EXEC: `callcenter.redis_durability`)."""

    async def execute(self, raise_on_error: bool = True) -> Any:
        try:
            return await super().execute(raise_on_error)
        except REDIS_DOWN:
            REDIS_ERRORS.inc()
            raise


class CountingRedisCluster(RedisCluster):
    """The Redis Cluster client, counting as `CountingRedis` does (a command that failed after the
    client's own retries over MOVED, ASK and a failover). A command whose connection another task
    closed while it was being sent (`callcenter.redis.closed_under_send`: the client's recovery from
    a failed node) fails as the ConnectionError it is, so callers wait for Redis and retry."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except REDIS_DOWN:
            REDIS_ERRORS.inc()
            raise
        except (AttributeError, TypeError) as exc:
            if not closed_under_send(exc):
                raise
            raise _connection_closed(exc, repr(args[0])) from exc

    async def _determine_slot(self, *args: Any) -> int:
        keys = stream_read_keys(args)
        if not keys:
            return await super()._determine_slot(*args)
        slots = {self.keyslot(k) for k in keys}
        if len(slots) != 1:
            raise RedisClusterException(f"{args[0]} - all keys must map to the same key slot")
        return slots.pop()

    _slot_pools: dict[tuple[str, int], Any] | None = None

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if transaction:
            from callcenter.redis_cluster import SlotTransaction  # it builds on CountingPipeline

            if self._slot_pools is None:
                self._slot_pools = {}
            return SlotTransaction(self, self._slot_pools)
        return CountingClusterPipeline(self, transaction)  # type: ignore[abstract]


class CountingClusterPipeline(ClusterPipeline):
    """A pipeline of `CountingRedisCluster`: counts a failed `execute`, and fails as a
    ConnectionError when its connection was closed under its send, as the client's commands do."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except REDIS_DOWN:
            REDIS_ERRORS.inc()
            raise
        except (AttributeError, TypeError) as exc:
            if not closed_under_send(exc):
                raise
            raise _connection_closed(exc, "a pipeline") from exc


def _connection_closed(exc: Exception, what: str) -> RedisConnectionError:
    """The ConnectionError that `exc` is (`callcenter.redis.closed_under_send`: the client closed
    the connection while `what` was sent, so nothing was), counted as a failure to reach Redis."""
    REDIS_ERRORS.inc()
    return RedisConnectionError(f"connection closed by the client while {what} was sent: {exc}")


def exposition(*extra: CollectorRegistry) -> bytes:
    """Every metric of this process in Prometheus' text format, then those of `extra` registries
    (the api's tenant state: a registry per app, so two apps in one test process do not clash)."""
    return b"".join(generate_latest(r) for r in (REGISTRY, *extra))


def tenant_registry(redis: Redis, tenant: str) -> tuple[TenantState, CollectorRegistry]:
    """A `TenantState` for `tenant` and a registry of its own that exposes it."""
    state = TenantState(redis, tenant)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(state)
    return state, registry


def metric_names(registry: CollectorRegistry = REGISTRY) -> Iterable[str]:
    """The sample names this process exposes (for tests and the alert rules' check)."""
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name

