"""Redis Sentinel for the single-shard case (issue 13, acceptance 1): a master, a replica and three
sentinels from the Debian redis-server; every service reaches Redis by `redis+sentinel://`.

A call path end to end through it (the first call's test, imported), then a Sentinel failover
(`SENTINEL FAILOVER`: the replica promoted, the old master made its replica) under SIPp load,
measured from outside as the fault suite does: nothing lost.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_first_call import test_call_waits_in_queue_then_reaches_the_agent_logged_in_through_the_api  # noqa: F401

from callcenter_dev.faults import Fault, FaultResult, Load, Rig
from callcenter_dev.redis_topologies import RedisSentinelServers
from callcenter_dev.system import WholeSystem

pytestmark = pytest.mark.slow

LOAD = Load(rate=4, duration_s=8, talk_ms=1000, fault_at=0.4, settle_s=40, call_timeout_s=20)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinelServers]:
    servers = RedisSentinelServers().start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def system(sentinel: RedisSentinelServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    """The first call's system (tenant e2e), on the sentinels' master."""
    whole = WholeSystem.start(tmp_path_factory.mktemp("sentinel"), tenant="e2e", redis_server=sentinel)
    yield whole
    whole.stop()


def test_sentinel_failover_under_load_loses_nothing(sentinel: RedisSentinelServers,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    switched: list[tuple[int, int]] = []
    # the writes are paused from CLIENT PAUSE until every sentinel names the new master (1-2 s): the
    # edge lapse (5 s) must be longer, or the edge would be declared lost meanwhile
    rig = Rig.start(tmp_path_factory.mktemp("sentinel-fo"), agents=8, lapse_ms=5000, heartbeat_ms=500, drain_s=10,
                    tenant="sentinel", redis_server=sentinel)
    try:
        result = rig.run(Fault("sentinel-failover", "SENTINEL FAILOVER of the master",
                               strike=lambda r: switched.append(sentinel.failover())), LOAD)
    finally:
        rig.stop()
    print(FaultResult.HEADER)
    print(result.row())
    print(f"writes paused for {sentinel.paused_s:.1f} s by the planned failover")
    [(old, new)] = switched
    assert sentinel.master_port() == new != old
    assert result.calls == LOAD.calls, result.row()
    assert not result.lost, "\n".join([result.row(), *result.examples])
