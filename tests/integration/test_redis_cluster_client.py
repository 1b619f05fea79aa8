"""The cluster client of `callcenter.redis.connect` on a real Redis Cluster (3 masters + 3
replicas): transactions with WATCH on the master of the tenant's slot, a transaction after the
slot moved (CLUSTER FAILOVER), stream reads routed without asking a fixed node, a dead node that
serves none of the tenant's keys, and NOSCRIPT after a fail-over reloaded by the report batch."""

from __future__ import annotations

import msgpack
import pytest
from redis.exceptions import WatchError

from callcenter.redis import connect
from callcenter.store import Store
from callcenter.store.keys import Keys
from callcenter_dev.redis_topologies import RedisClusterServers, tenants_on_distinct_masters


async def test_a_watched_transaction_runs_on_the_tenant_master_and_sees_a_conflict(
        cluster: RedisClusterServers) -> None:
    [tenant] = tenants_on_distinct_masters(cluster, 1, prefix="watch")
    key = Keys(tenant).config
    r, other = connect(cluster.url), connect(cluster.url)
    async with r.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        pipe.multi()
        pipe.hset(key, "a", 1)
        assert await pipe.execute() == [1]
    async with r.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        await other.hset(key, "a", 2)   # a write between WATCH and EXEC
        pipe.multi()
        pipe.hset(key, "a", 3)
        with pytest.raises(WatchError):
            await pipe.execute()
    assert await r.hget(key, "a") == b"2"
    await r.aclose()
    await other.aclose()


async def test_a_transaction_follows_its_slot_to_the_new_master(cluster: RedisClusterServers) -> None:
    [tenant] = tenants_on_distinct_masters(cluster, 1, prefix="moved")
    keys = Keys(tenant)
    r = connect(cluster.url)
    async with r.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.events, {"n": 1})
        pipe.hset(keys.stats, "n", 1)
        await pipe.execute()
    cluster.failover_tenant(tenant)
    async with r.pipeline(transaction=True) as pipe:   # the pooled connection is to the old master
        pipe.xadd(keys.events, {"n": 2})
        pipe.hincrby(keys.stats, "n", 1)
        assert (await pipe.execute())[1] == 2
    await r.aclose()


async def test_reads_and_report_steps_go_on_when_another_master_dies(cluster: RedisClusterServers) -> None:
    """Last in the module: it leaves a shard without its master's process."""
    victim, tenant = tenants_on_distinct_masters(cluster, 2, prefix="dead")
    keys = Keys(tenant)
    r = connect(cluster.url)
    store = Store(r, tenant)
    await r.xgroup_create(keys.reports, "g", id="0", mkstream=True)
    await r.xadd(keys.reports, {"n": 1})
    assert await r.xreadgroup("g", "c", {keys.reports: ">"}, count=10)
    # whichever node the client asked for command keys, the victim's master goes away
    cluster.kill_master_of_tenant(victim)
    await r.xadd(keys.reports, {"n": 2})
    got = await r.xreadgroup("g", "c", {keys.reports: ">"}, count=10, block=100)
    assert got and len(got[0][1]) == 1
    # the report steps of this tenant run (a report of an unknown call comes back as an answer)
    data = msgpack.packb({"call_id": "x", "edge": "e", "seq": 2, "ts": 0, "by": "caller", "reason": "bye"})
    [result] = await store.apply_reports([("report.call_ended", "1-0", data)])
    assert result.rc.name in ("OUT_OF_ORDER", "NOT_FOUND", "DUPLICATE", "OK"), result
    await r.aclose()
