"""callcenter.metrics below the services: the edge's SIP counts keep a bounded label set whatever a
sender writes, the Redis client counts its failures, and the tenant collector reads what the Lua
steps wrote on a real redis-server and keeps answering when Redis is away."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from callcenter import metrics
from callcenter.redis import REDIS_DOWN, connect
from callcenter.store import Store


def samples(registry: object | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition(*([registry] if registry is not None else [])).decode()  # type: ignore[list-item]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_sip_counts_keep_a_bounded_label_set() -> None:
    counts = metrics.SipCounts()
    counts.message("in", b"INVITE sip:sales@10.0.0.1 SIP/2.0\r\n")
    counts.message("in", b"FOO sip:x SIP/2.0\r\n")          # a method of the sender's choosing
    counts.message("in", b"X" * 40)                          # no space at all
    counts.message("out", b"SIP/2.0 180 Ringing\r\n")
    counts.message("out", b"SIP/2.0 9999 Odd\r\n")           # not a 3-digit code we know
    counts.retransmission("out")
    families = {f.name: f for f in counts.collect()}
    requests = {tuple(s.labels.values()): s.value for s in families["callcenter_sip_requests"].samples}
    responses = {tuple(s.labels.values()): s.value for s in families["callcenter_sip_responses"].samples}
    assert requests == {("in", "INVITE"): 1, ("in", "OTHER"): 2}
    assert responses == {("out", "180"): 1, ("out", "OTHER"): 1}
    assert {tuple(s.labels.values()): s.value for s in families["callcenter_sip_retransmissions"].samples} == \
        {("in",): 0, ("out",): 1}
    for _ in range(1000):  # new names never become new keys
        counts.message("in", f"M{_} sip:x SIP/2.0".encode())
    assert len(counts.requests) == 2 * (len(metrics.SIP_METHODS) + 1)


def test_observe_since_entry_ignores_what_is_not_a_stream_id() -> None:
    before = samples()
    metrics.observe_since_entry("report_to_decision", "not-an-id")
    metrics.observe_since_entry("report_to_decision", "1000-0", now_s=1.5)  # 0.5 s after the entry
    after = samples()
    key = ("callcenter_dispatch_latency_seconds_count", (("path", "report_to_decision"),))
    assert after[key] - before.get(key, 0) == 1
    le = ("callcenter_dispatch_latency_seconds_bucket", (("le", "0.5"), ("path", "report_to_decision")))
    assert after[le] - before.get(le, 0) == 1


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_client_counts_commands_and_pipelines_that_find_redis_away() -> None:
    client = connect(f"redis://127.0.0.1:{free_tcp_port()}/0")
    key = ("callcenter_redis_errors_total", ())
    before = samples()[key]
    with pytest.raises(REDIS_DOWN):
        await client.ping()
    with pytest.raises(REDIS_DOWN):
        async with client.pipeline() as pipe:
            pipe.ping()
            await pipe.execute()
    assert samples()[key] == before + 2
    await client.aclose()


async def test_tenant_state_reads_queues_agents_and_groups(redis: object) -> None:
    store = Store(redis, "m")  # type: ignore[arg-type]
    await store.redis.sadd(store.keys.flows, "sales", "vip")
    await store.redis.hset(store.keys.flow("sales"), mapping={"skill": "s"})
    await store.redis.hset(store.keys.flow("vip"), mapping={"skill": "s", "sl_threshold_s": "5"})
    await store.redis.hset(store.keys.config, mapping={"sl_threshold_s": "30"})
    await store.redis.sadd(store.keys.agents, "1", "2")
    await store.redis.hset(store.keys.agent("1"), mapping={"state": "free"})
    await store.redis.sadd(store.keys.skill_logged("s"), "1")
    await store.redis.hset(store.keys.call("c1"), mapping={"received_ms": "1000000"})
    await store.redis.zadd(store.keys.queue("sales"), {"c1": 1})
    # the tenant's counters are the sum of its flows' (a deleted flow's too, while in statflows)
    await store.redis.sadd(store.keys.statflows, "sales", "vip", "gone")
    await store.redis.hset(store.keys.flow_stats("sales"), mapping={"incalls": "4", "answered": "3", "aht_ema_ms": "9"})
    await store.redis.hset(store.keys.flow_stats("vip"), mapping={"incalls": "2", "answered": "2"})
    await store.redis.hset(store.keys.flow_stats("gone"), mapping={"incalls": "1"})
    await store.redis.xgroup_create(store.keys.reports, "dispatcher", id="0", mkstream=True)
    await store.redis.xadd(store.keys.reports, {"x": "1"})
    state, registry = metrics.tenant_registry(store.redis, "m")
    snap = await state.refresh(now_s=1030.0)
    assert snap.ok and snap.queue_calls == {"sales": 1, "vip": 0}
    assert snap.oldest_wait_s == {"sales": 30.0, "vip": 0.0}
    assert snap.sl_threshold_s == {"sales": 30.0, "vip": 5.0}  # the tenant's, the flow's own
    assert snap.logged_in == {"sales": 1, "vip": 1} and snap.agents == {"free": 1, "logged_out": 1}
    assert snap.calls["arrived"] == 7 and snap.calls["answered"] == 5
    assert ("reports", "dispatcher", 1, 0) in snap.groups
    exposed = samples(registry)
    assert exposed[("callcenter_queue_oldest_wait_seconds", (("flow", "sales"),))] == 30.0
    assert exposed[("callcenter_calls_total", (("outcome", "answered"),))] == 5


async def test_tenant_state_answers_when_redis_is_away() -> None:
    state, registry = metrics.tenant_registry(connect(f"redis://127.0.0.1:{free_tcp_port()}/0"), "m")
    assert not (await state.refresh()).ok
    exposed = samples(registry)
    assert exposed[("callcenter_tenant_scrape_ok", (("tenant", "m"),))] == 0
    assert not any(name == "callcenter_queue_calls" for name, _ in exposed)
    await state.redis.aclose()
