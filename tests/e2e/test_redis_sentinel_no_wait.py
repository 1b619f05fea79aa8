"""A Sentinel failover under SIPp load with WAIT off (its default): the sip-edge publishes its report
batches through its one-send transaction on a connection it keeps (callcenter_sip_edge/transaction.py),
not the client's pipeline that the WAIT runs of test_redis_sentinel.py take. The kept connection
finds the old master demoted; the batch is tried again on the new master (found through the
sentinels), once: nothing lost, nothing appended twice.
"""

from __future__ import annotations

import pytest
from failover_harness import LOAD, assert_nothing_lost, waits_run

from callcenter_dev.faults import Fault, FaultResult, Rig
from callcenter_dev.redis_topologies import RedisSentinelServers

pytestmark = pytest.mark.slow


def test_sentinel_failover_without_wait_loses_nothing(sentinel: RedisSentinelServers,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    switched: list[tuple[int, int]] = []
    data_ports = [n.port for n in sentinel.data]
    waits_before = waits_run(data_ports)
    rig = Rig.start(tmp_path_factory.mktemp("sentinel-nowait"), agents=8, lapse_ms=5000, heartbeat_ms=500,
                    drain_s=10, tenant="nowait", redis_server=sentinel, env={})
    try:
        result = rig.run(Fault("sentinel-failover", "SENTINEL FAILOVER of the master, WAIT off",
                               strike=lambda r: switched.append(sentinel.failover())), LOAD)
    finally:
        rig.stop()
    print(FaultResult.HEADER)
    print(result.row())
    assert waits_run(data_ports) == waits_before, "WAIT ran: the edge took the pipeline, not the one-send path"
    [(old, new)] = switched
    assert sentinel.master_port() == new != old
    assert_nothing_lost(result)
