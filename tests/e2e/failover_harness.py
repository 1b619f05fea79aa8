"""What the Redis failover tests (Cluster, Sentinel) share: the SIPp load they run through a
failover, the fault suite's rig they run it on, and what "nothing lost" asserts of the result.
"""

from __future__ import annotations

from pathlib import Path

from callcenter_dev.faults import FaultResult, Load, Rig
from callcenter_dev.redis_topologies import RedisClusterServers, RedisSentinelServers

LOAD = Load(rate=4, duration_s=8, talk_ms=1000, fault_at=0.4, settle_s=40, call_timeout_s=20)


def failover_rig(workdir: Path, tenant: str, redis_server: RedisClusterServers | RedisSentinelServers) -> Rig:
    """A whole system for `tenant` on `redis_server`, 8 agents. Its edge lapse (5 s) is longer than
    the 1-2 s a failover pauses the writes, so no edge is declared lost meanwhile."""
    return Rig.start(workdir, agents=8, lapse_ms=5000, heartbeat_ms=500, drain_s=10, tenant=tenant,
                     redis_server=redis_server)


def assert_nothing_lost(result: FaultResult, *context: str) -> None:
    """Every call of LOAD was made, and the measurement found no loss (`context` heads the message)."""
    assert result.calls == LOAD.calls, result.row()
    assert not result.lost, "\n".join([*context, result.row(), *result.examples])
