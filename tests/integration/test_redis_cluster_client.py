"""The cluster client of `callcenter.redis.connect` on a real Redis Cluster (3 masters + 3
replicas): transactions with WATCH on the master of the tenant's slot, a transaction after the
slot moved (CLUSTER FAILOVER), a command whose connection the client's own recovery closed while it
was sent, stream reads routed without asking a fixed node, a dead node that serves none of the
tenant's keys, and NOSCRIPT after a fail-over reloaded by the report batch."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from callcenter.redis import REDIS_DOWN, connect
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


async def _hget_piped(r: Redis, key: str) -> object:
    async with r.pipeline(transaction=False) as pipe:   # the dispatcher's report batches go this way
        pipe.hget(key, "a")
        return (await pipe.execute())[0]


@pytest.mark.parametrize("way", ["command", "pipeline"])
async def test_a_command_whose_connection_the_client_closed_under_its_send_is_a_connection_error(
        cluster: RedisClusterServers, way: str) -> None:
    """What stopped a dispatcher when the tenant's master was killed under load (the clean-clone CI
    at 6609fce, test_redis_cluster.py): the client's recovery from a failed node, in one task,
    disconnects the node's idle connections (redis-py's `disconnect_free_connections`) while another
    task has just taken one of them for its next command. redis-py let AttributeError out of that
    command ('NoneType' object has no attribute 'writelines'), which no service waits out; it must
    be a ConnectionError, and the client must go on. The recovery is run here at each point of the
    command's way to the socket in turn, with the event loop's own scheduling."""
    [tenant] = tenants_on_distinct_masters(cluster, 1, prefix=f"race{way}")
    key = Keys(tenant).config
    r = connect(cluster.url)
    await r.hset(key, "a", 1)
    node = r.get_node_from_key(key)

    async def hget() -> object:
        return await (r.hget(key, "a") if way == "command" else _hget_piped(r, key))

    outcomes: list[object] = []
    for yields in range(8):
        assert await hget() == b"1"   # the node's pool holds an idle connection
        recovery = asyncio.ensure_future(node.disconnect_free_connections())
        for _ in range(yields):   # the recovery gets this far before the next command starts
            await asyncio.sleep(0)
        try:
            outcomes.append(await hget())
        except REDIS_DOWN as exc:
            outcomes.append(exc)
        await recovery
    closed = [o for o in outcomes if isinstance(o, RedisConnectionError)]
    assert closed, f"the recovery never closed a connection under a send: {outcomes}"
    assert all(o == b"1" for o in outcomes if o not in closed), outcomes
    assert await hget() == b"1"
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
