"""Redis Sentinel for the single-shard case (issue 13, acceptance 1): a master, a replica and three
sentinels from the Debian redis-server; every service reaches Redis by `redis+sentinel://`.

A call path end to end through it (the first call's test, imported), then a Sentinel failover
(`SENTINEL FAILOVER`: the replica promoted, the old master made its replica) under SIPp load,
measured from outside as the fault suite does: nothing lost.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_harness import started_system
from failover_harness import LOAD, WAIT_ENV, assert_nothing_lost, failover_rig, waits_run
from test_first_call import test_call_waits_in_queue_then_reaches_the_agent_logged_in_through_the_api  # noqa: F401

from callcenter_dev.faults import Fault, FaultResult
from callcenter_dev.redis_topologies import RedisSentinelServers
from callcenter_dev.system import WholeSystem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(sentinel: RedisSentinelServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    """The first call's system (tenant e2e), on the sentinels' master, WAITing for its replica."""
    yield from started_system(tmp_path_factory, "e2e", redis_server=sentinel, common_env=WAIT_ENV)


def test_sentinel_failover_under_load_loses_nothing(sentinel: RedisSentinelServers,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    switched: list[tuple[int, int]] = []
    # the writes are paused from CLIENT PAUSE until every sentinel names the new master (1-2 s)
    data_ports = [n.port for n in sentinel.data]
    waits_before = waits_run(data_ports)
    rig = failover_rig(tmp_path_factory.mktemp("sentinel-fo"), "sentinel", sentinel)
    try:
        result = rig.run(Fault("sentinel-failover", "SENTINEL FAILOVER of the master",
                               strike=lambda r: switched.append(sentinel.failover())), LOAD)
    finally:
        rig.stop()
    print(FaultResult.HEADER)
    print(result.row())
    print(f"writes paused for {sentinel.paused_s:.1f} s by the planned failover")
    waits = waits_run(data_ports) - waits_before
    print(f"WAITs run by the masters during the load: {waits}")
    assert waits > 0, "the services ran without CC_REDIS_WAIT_REPLICAS"
    [(old, new)] = switched
    assert sentinel.master_port() == new != old
    assert_nothing_lost(result)
