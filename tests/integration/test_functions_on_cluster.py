"""The Lua steps as Redis Functions on a real Redis Cluster (3 masters + 3 replicas), issue 15 and
issue 13: the Store loads the library on every master, a step runs by FCALL on the master of its
tenant's slot, a master that lost the library gets it again on its first "Function not found", and
Redis itself refuses a function that touches a key outside the slot of its declared key (the
library declares no `allow-cross-slot-keys`), even when both slots are on the same master."""

from __future__ import annotations

import re

import pytest
from redis.exceptions import ResponseError

from callcenter.redis import connect
from callcenter.store import RC, Store
from callcenter.store.keys import Keys
from callcenter.store.sources import library
from callcenter_dev.redis_topologies import RedisClusterServers, tenant_slot, tenants_on_distinct_masters

# A tiny library registered as store.sources.library() registers its steps (no flags): it writes
# its declared key, then the key named by its argument.
PROBE = """#!lua name=cc_test_probe
redis.register_function{ function_name = 'cc_test_probe_write', callback = function(keys, args)
  redis.call('HSET', keys[1], 'probe', 1)
  redis.call('HSET', args[1], 'probe', 1)
  return 1
end }
"""


def _libraries(cluster: RedisClusterServers, port: int) -> set[str]:
    raw = cluster.node(port).client().function_list()
    return {dict(zip(lib[::2], lib[1::2], strict=True))[b"library_name"].decode() for lib in raw}


def test_the_library_declares_no_cross_slot_flag() -> None:
    lib = library()
    assert "allow-cross-slot-keys" not in lib.source
    registrations = re.findall(r"redis\.register_function\{ function_name = '(\w+)', callback = function", lib.source)
    assert sorted(registrations) == sorted([*lib.functions.values(), *lib.appended.values()])
    assert "flags =" not in lib.source


async def test_a_step_loads_the_library_on_every_master_and_runs(cluster: RedisClusterServers) -> None:
    [tenant] = tenants_on_distinct_masters(cluster, 1, prefix="fn")
    r = connect(cluster.url)
    store = Store(r, tenant)
    masters = {cluster.master_port_of_slot(slot) for slot in (0, 8000, 16383)}
    assert len(masters) == 3
    for port in masters:
        cluster.node(port).client().function_flush()
    assert (await store.flow_upsert("f1", {"name": "one", "skill": "sales"})).rc is RC.OK
    for port in masters:
        assert store.library.name in _libraries(cluster, port), port
    # a master that lost it (a restart without persistence) gets it on the next call
    cluster.node(cluster.master_of_tenant(tenant)).client().function_flush()
    assert (await store.flow_delete("f1")).rc is RC.OK
    assert store.library.name in _libraries(cluster, cluster.master_of_tenant(tenant))
    await r.aclose()


async def test_redis_refuses_a_key_of_another_tenants_slot(cluster: RedisClusterServers) -> None:
    own, other = tenants_on_distinct_masters(cluster, 2, prefix="xslot")
    # a tenant in another slot of the same master as `own`
    same_master = next(t for t in (f"xs{i}" for i in range(10_000))
                       if cluster.master_of_tenant(t) == cluster.master_of_tenant(own)
                       and tenant_slot(t) != tenant_slot(own))
    node = cluster.node(cluster.master_of_tenant(own)).client()
    node.function_load(PROBE, replace=True)
    own_key = Keys(own).config
    assert node.fcall("cc_test_probe_write", 1, own_key, Keys(own).stats) == 1  # same slot: allowed
    # another slot of the same master: refused as cross-slot (an EVAL without flags would allow it)
    with pytest.raises(ResponseError, match="slot"):
        node.fcall("cc_test_probe_write", 1, own_key, Keys(same_master).config)
    # a key another master serves
    with pytest.raises(ResponseError, match="non local key"):
        node.fcall("cc_test_probe_write", 1, own_key, Keys(other).config)
    assert node.exists(Keys(same_master).config) == 0  # refused before it wrote
    node.function_delete("cc_test_probe")
