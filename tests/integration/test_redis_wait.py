"""WAIT for replicas (`CC_REDIS_WAIT_REPLICAS`) on real topologies.

Sentinel (a master and its replica): the sip-edge's report batch returns once the replica has it
(WAIT sent on the master, returning 1; the entry is read back from the replica's own process);
with the replica stopped (SIGSTOP: connected, acknowledging nothing) the WAIT times out, the write
stands on the master and the missing replica is counted. Cluster (3 masters + 3 replicas): the
dispatcher's consumer WAITs with its XACK on the master of the tenant's slot, and only there, and
its replica holds the handler's writes and the acknowledgement. One redis-server without replicas:
the WAIT of a batch returns 0 at its timeout and the batch is published all the same.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping, Sequence

import pytest
import redis

from callcenter.bus import ACK, StreamConsumer, Verdict
from callcenter.contract.codec import Entry
from callcenter.contract.reports import CallArrived, Report
from callcenter.metrics import REDIS_WAIT_MISSING
from callcenter.redis import connect
from callcenter.redis_durability import ReplicaWait, wait_after
from callcenter.store.keys import Keys
from callcenter_dev.redis_topologies import RedisClusterServers, RedisSentinelServers, tenants_on_distinct_masters
from callcenter_dev.servers import RedisServer
from callcenter_sip_edge.checkpoint import Checkpoints
from callcenter_sip_edge.publisher import ReportPublisher

EDGE = "edge-wait"


def arrived(call_id: str) -> Report:
    return CallArrived(call_id=call_id, edge=EDGE, seq=1, ts=1, flow="sales", caller="ann", caller_uri="sip:ann@x",
                       sip_call_id=f"{call_id}@x", source="127.0.0.1:5060")


def waits_on(port: int) -> int:
    """How many WAIT commands the redis-server on `port` has run."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as c:
        stats = c.info("commandstats").get("cmdstat_wait")
    return int(stats["calls"]) if stats else 0


def missing(path: str) -> float:
    return REDIS_WAIT_MISSING.labels(path)._value.get()


def publisher(url: str, tenant: str, wait: ReplicaWait) -> ReportPublisher:
    client, keys = connect(url), Keys(tenant)
    return ReportPublisher(client, keys, EDGE, Checkpoints(client, keys, EDGE), wait)


async def test_a_report_batch_returns_once_the_replica_has_it(sentinel: RedisSentinelServers) -> None:
    master = sentinel.master_port()
    [replica] = [n for n in sentinel.data if n.port != master]
    pub = publisher(sentinel.url, "waited", ReplicaWait(1, 2000))
    before, counted = waits_on(master), missing("edge_publish")
    for n in range(5):
        await pub.publish([arrived(f"c{n}")])
        assert missing("edge_publish") == counted   # the replica acknowledged in time
        # read from the replica's own process right after the batch returned: it is there
        with replica.client() as c:
            assert c.xlen(pub.keys.reports) == n + 1
    assert waits_on(master) - before == 5
    assert waits_on(replica.port) == 0
    await pub.redis.aclose()


async def test_a_replica_that_does_not_acknowledge_is_counted_and_the_write_stands(
        sentinel: RedisSentinelServers) -> None:
    master = sentinel.master_port()
    [replica] = [n for n in sentinel.data if n.port != master]
    assert replica.proc is not None
    pub = publisher(sentinel.url, "stopped", ReplicaWait(1, 200))
    await pub.publish([arrived("warm")])    # connected before the replica stops
    counted = missing("edge_publish")
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        await pub.publish([arrived("late")])
        took = time.monotonic() - started
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    assert took >= 0.19   # the WAIT's timeout, not longer than needed (generous upper bound)
    assert took < 5
    assert missing("edge_publish") - counted == 1
    with redis.Redis(host="127.0.0.1", port=master, socket_timeout=5) as c:
        assert c.xlen(pub.keys.reports) == 2
    await pub.redis.aclose()


async def test_the_dispatchers_acknowledgement_waits_on_the_tenant_master(cluster: RedisClusterServers) -> None:
    [tenant] = tenants_on_distinct_masters(cluster, 1, prefix="waitack")
    keys = Keys(tenant)
    master = cluster.master_of_tenant(tenant)
    replica = cluster.replica_of(master)
    others = [n.port for n in cluster.nodes if n.port != master]
    r = connect(cluster.url)
    for n in range(6):
        await r.xadd(keys.reports, arrived(f"c{n}").to_fields())  # type: ignore[arg-type]
    before = {n.port: waits_on(n.port) for n in cluster.nodes}

    async def handler(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
        for e in entries:   # the handler's effect: a write of its own, before the XACK
            await r.hset(keys.stats, e.id, 1)
        return {e.id: ACK for e in entries}

    counted = missing("dispatchers_ack")
    consumer = StreamConsumer(r, stream=keys.reports, group="dispatchers", consumer="d1", handler=handler,
                              dead_stream=keys.dead, batch=2, block_ms=50, wait=ReplicaWait(1, 2000))
    task = asyncio.create_task(consumer.run())
    for _ in range(200):
        if consumer.handled == 6:
            break
        await asyncio.sleep(0.05)
    consumer.request_stop()
    await asyncio.wait_for(task, 10)
    assert consumer.handled == 6
    assert missing("dispatchers_ack") == counted   # the replica acknowledged every batch in time
    assert waits_on(master) - before[master] >= 3    # one per acknowledged batch of 2
    assert all(waits_on(p) == before[p] for p in others)
    with redis.Redis(host="127.0.0.1", port=replica, socket_timeout=5) as c:
        c.execute_command("READONLY")
        assert c.hlen(keys.stats) == 6
        assert c.xpending(keys.reports, "dispatchers")["pending"] == 0
    await r.aclose()


async def test_without_a_replica_the_wait_times_out_and_the_batch_is_published(
        redis_server: RedisServer) -> None:
    pub = publisher(redis_server.url, "alone", ReplicaWait(1, 20))
    counted = missing("edge_publish")
    await pub.publish([arrived("c1")])
    assert missing("edge_publish") - counted == 1
    assert await pub.redis.xlen(pub.keys.reports) == 1
    await pub.redis.aclose()


async def test_wait_needs_a_client_of_connect(redis_server: RedisServer) -> None:
    plain = redis.asyncio.Redis.from_url(redis_server.url)
    async with plain.pipeline(transaction=True) as pipe:
        wait_after(pipe, None)   # no WAIT asked: any client will do
        with pytest.raises(TypeError):
            wait_after(pipe, ReplicaWait(1, 10))
    await plain.aclose()
