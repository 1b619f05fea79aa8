"""The cost of `CC_REDIS_WAIT_REPLICAS=1` on a Redis Cluster (3 masters + 3 replicas, Debian
redis-server on loopback): the two writes it waits after, with WAIT off and on.

- edge publish: the sip-edge's `ReportPublisher.publish` of one batch of REPORTS reports (with the
  exactly-once marker in the MULTI, as the edge sends them), one batch after the other;
- dispatcher ack: the report consumer's XACK of one entry (`StreamConsumer.ack`: alone with WAIT
  off, in a MULTI followed by WAIT with it on).

For each: wall time per operation (p50, p99), the client's CPU per operation (process time), and
the CPU of the tenant's master and of its replica per operation (INFO cpu). The WAIT timeout is
the default 50 ms; every WAIT here is answered by the replica long before it.

    .venv/bin/python bench/redis_wait.py [--ops N] [--reports N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import redis

from callcenter.bus import ACK, StreamConsumer, Verdict
from callcenter.contract.codec import Entry
from callcenter.contract.reports import CallArrived, Report
from callcenter.redis import connect
from callcenter.redis_durability import ReplicaWait
from callcenter.store.keys import Keys
from callcenter_dev.redis_topologies import RedisClusterServers, tenants_on_distinct_masters
from callcenter_sip_edge.checkpoint import Checkpoints
from callcenter_sip_edge.publisher import ReportPublisher

WAIT = ReplicaWait(1, 50)


def cpu_s(port: int) -> float:
    with redis.Redis(host="127.0.0.1", port=port) as c:
        info = c.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(op: Callable[[int], Awaitable[None]], ops: int, ports: Sequence[int]) -> dict[str, float]:
    for i in range(50):   # warm: connections, scripts, the slot map
        await op(-1 - i)
    server0 = [cpu_s(p) for p in ports]
    cpu0 = time.process_time()
    walls = []
    for i in range(ops):
        t = time.perf_counter()
        await op(i)
        walls.append(time.perf_counter() - t)
    client = (time.process_time() - cpu0) / ops
    server = [(cpu_s(p) - s0) / ops for p, s0 in zip(ports, server0, strict=True)]
    walls.sort()
    return {"p50_us": walls[len(walls) // 2] * 1e6, "p99_us": walls[int(len(walls) * 0.99)] * 1e6,
            "mean_us": statistics.fmean(walls) * 1e6, "client_cpu_us": client * 1e6,
            "master_cpu_us": server[0] * 1e6, "replica_cpu_us": server[1] * 1e6}


def report(edge: str, n: int, k: int) -> Report:
    return CallArrived(call_id=f"c{n}-{k}", edge=edge, seq=1, ts=1, flow="f", caller="ann", caller_uri="sip:ann@x",
                       sip_call_id=f"c{n}-{k}@x", source="127.0.0.1:5060")


async def run(cluster: RedisClusterServers, ops: int, reports: int) -> None:
    [tenant] = tenants_on_distinct_masters(cluster, 1, prefix="benchwait")
    keys = Keys(tenant)
    master = cluster.master_of_tenant(tenant)
    ports = [master, cluster.replica_of(master)]
    r = connect(cluster.url)
    print(f"tenant {tenant} on master {master}, replica {ports[1]}; {ops} operations each, "
          f"batches of {reports} report(s), WAIT {WAIT.replicas} {WAIT.timeout_ms}")
    print(f"{'path':<18}{'WAIT':>6}{'p50 µs':>10}{'p99 µs':>10}{'client CPU µs':>15}{'master CPU µs':>15}"
          f"{'replica CPU µs':>16}")
    for wait in (None, WAIT):
        pub = ReportPublisher(r, keys, f"edge-{wait is not None}", Checkpoints(r, keys, "e"), wait)

        async def publish(n: int, pub: ReportPublisher = pub) -> None:
            await pub.publish([report(pub.writer, n, k) for k in range(reports)])

        row = await measure(publish, ops, ports)
        print(f"{'edge publish':<18}{'on' if wait else 'off':>6}{row['p50_us']:>10.0f}{row['p99_us']:>10.0f}"
              f"{row['client_cpu_us']:>15.0f}{row['master_cpu_us']:>15.0f}{row['replica_cpu_us']:>16.0f}")
    for wait in (None, WAIT):
        stream = keys.prefix + f"benchack:{wait is not None}"
        ids = [(await r.xadd(stream, {"n": i})).decode() for i in range(ops + 50)]
        await r.xgroup_create(stream, "g", id="0")
        await r.xreadgroup("g", "c", {stream: ">"}, count=ops + 50)

        async def nothing(entries: Sequence[Entry]) -> Mapping[str, Verdict]:
            return {e.id: ACK for e in entries}

        consumer = StreamConsumer(r, stream=stream, group="g", consumer="c", handler=nothing,
                                  dead_stream=keys.dead, wait=wait)

        async def ack(n: int, consumer: StreamConsumer = consumer, ids: list[str] = ids) -> None:
            await consumer.ack(ids[n + 50 if n >= 0 else -n - 1])

        row = await measure(ack, ops, ports)
        print(f"{'dispatcher ack':<18}{'on' if wait else 'off':>6}{row['p50_us']:>10.0f}{row['p99_us']:>10.0f}"
              f"{row['client_cpu_us']:>15.0f}{row['master_cpu_us']:>15.0f}{row['replica_cpu_us']:>16.0f}")
    await r.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--reports", type=int, default=1)
    args = parser.parse_args()
    cluster = RedisClusterServers().start()
    try:
        asyncio.run(run(cluster, args.ops, args.reports))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
