"""What the Redis failover tests (Cluster, Sentinel) share: the SIPp load they run through a
failover, the fault suite's rig they run it on, and what "nothing lost" asserts of the result.
"""

from __future__ import annotations

from pathlib import Path

import redis

from callcenter_dev.faults import FaultResult, Load, Rig
from callcenter_dev.redis_topologies import RedisClusterServers, RedisSentinelServers

LOAD = Load(rate=4, duration_s=8, talk_ms=1000, fault_at=0.4, settle_s=40, call_timeout_s=20)
# the failover tests run with WAIT on (issue 13): each report batch of the edge and each
# acknowledgement of the dispatcher waits (up to 50 ms) for the one replica of the tenant's master
WAIT_ENV = {"CC_REDIS_WAIT_REPLICAS": "1", "CC_REDIS_WAIT_TIMEOUT_MS": "50"}


def failover_rig(workdir: Path, tenant: str, redis_server: RedisClusterServers | RedisSentinelServers) -> Rig:
    """A whole system for `tenant` on `redis_server`, 8 agents. Its edge lapse (5 s) is longer than
    the 1-2 s a failover pauses the writes, so no edge is declared lost meanwhile. WAIT is on
    (`WAIT_ENV`)."""
    return Rig.start(workdir, agents=8, lapse_ms=5000, heartbeat_ms=500, drain_s=10, tenant=tenant,
                     redis_server=redis_server, env=WAIT_ENV)


def assert_nothing_lost(result: FaultResult, *context: str) -> None:
    """Every call of LOAD was made, and the measurement found no loss (`context` heads the message)."""
    assert result.calls == LOAD.calls, result.row()
    assert not result.lost, "\n".join([*context, result.row(), *result.examples])


def waits_run(ports: list[int]) -> int:
    """How many WAIT commands the live redis-servers on `ports` have run (INFO commandstats): the
    proof that the services ran with WAIT on."""
    total = 0
    for port in ports:
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as c:
                stats = c.info("commandstats").get("cmdstat_wait")
        except redis.ConnectionError:
            continue   # a killed master
        total += int(stats["calls"]) if stats else 0
    return total
