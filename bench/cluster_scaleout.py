"""Scale-out of the decisions over Redis Cluster masters: decisions/s with 1 vs 3 masters, in
one run on one cluster (3 masters + 3 replicas from the Debian redis-server).

Three tenants, each with the state of bench/dispatcher_decisions.py at a smaller size (FLOWS flows,
AGENTS agents all busy, WAITING waiting calls). A decision is one report applied by its Lua step
(a call ends and its agent takes the next waiting call; a new call arrives and queues).

- "1 master": three tenants whose slots are all on one master;
- "3 masters": three tenants, one on each master.

In each case the three tenants' reports are applied at once, one asyncio client process per tenant
(the dispatcher's path: `Store.apply_reports` batches through the cluster client), and the total
decisions/s is printed, with the time each decision spent inside Redis (INFO commandstats of the
masters) and the ratio 3 masters / 1 master.

On the 2-core reference machine the client processes and the three masters share 2 cores, so the
ratio shows what the clients can drive, not what three shards can do; the Redis-side figure
(µs per decision) gives the shard's own capacity, 1e6 / µs per master, from which the paper
extrapolation to more cores is made (bench/README.md).

    .venv/bin/python bench/cluster_scaleout.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from typing import Any

import dispatcher_decisions as dd  # the bench's own World (bench/ is the script's directory), sized down below

from callcenter.redis import connect
from callcenter.store import Store
from callcenter_dev.redis_topologies import RedisClusterServers

BATCH = 64


def tenants_on(cluster: RedisClusterServers, masters: int, prefix: str) -> list[str]:
    """Three tenant names: all on one master (masters=1) or one on each of three (masters=3)."""
    by_master: dict[int, list[str]] = {}
    for i in range(100_000):
        name = f"{prefix}{i}"
        by_master.setdefault(cluster.master_of_tenant(name), []).append(name)
        if masters == 1:
            full = [names for names in by_master.values() if len(names) == 3]
            if full:
                return full[0]
        elif len(by_master) == 3:
            return [names[0] for names in by_master.values()]
    raise RuntimeError("not enough tenants")


async def _build(url: str, tenant: str, n: int) -> list[tuple[str, bytes]]:
    r = connect(url)
    store = Store(r, tenant)
    world = dd.World(store)
    await world.build()
    items = world.workload(n)
    await r.aclose()
    return items


async def _apply(url: str, tenant: str, items: list[tuple[str, bytes]], in_flight: int) -> float:
    r = connect(url)
    store = Store(r, tenant)
    batches = [[(t, "0-0", d) for t, d in items[i:i + BATCH]] for i in range(0, len(items), BATCH)]
    # each call appears once in a workload: batches in flight never race on one call
    sem = asyncio.Semaphore(in_flight)

    async def one(batch: list[tuple[str, str, bytes]]) -> None:
        async with sem:
            await store.apply_reports(batch)
    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in batches))
    elapsed = time.perf_counter() - t0
    await r.aclose()
    return elapsed


def _worker(url: str, tenant: str, n: int, in_flight: int, size: tuple[int, int, int], ready: Any, go: Any,
            out: Any) -> None:
    dd.FLOWS, dd.AGENTS, dd.WAITING = size   # a spawned process starts from the module's defaults
    items = asyncio.run(_build(url, tenant, n))
    ready.set()
    go.wait()
    out.put((tenant, len(items), asyncio.run(_apply(url, tenant, items, in_flight))))


def run_case(cluster: RedisClusterServers, tenants: list[str], n: int, in_flight: int) -> tuple[float, float]:
    """Total decisions/s of the tenants applied at once, and µs per decision inside Redis."""
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in tenants]
    procs = [ctx.Process(target=_worker, args=(cluster.url, t, n, in_flight, (dd.FLOWS, dd.AGENTS, dd.WAITING),
                                                   ready, go, out))
             for t, ready in zip(tenants, readies, strict=True)]
    for p in procs:
        p.start()
    for ready in readies:
        ready.wait(600)
    masters = {cluster.master_of_tenant(t) for t in tenants}
    for port in masters:
        with cluster.node(port).client() as c:
            c.config_resetstat()
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in tenants]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    decisions = sum(n_items for _, n_items, _ in results)
    calls = usec = 0.0
    for port in masters:
        with cluster.node(port).client() as c:
            stats: Any = c.info("commandstats").get("cmdstat_fcall", {})
        calls += float(stats.get("calls", 0))
        usec += float(stats.get("usec", 0))
    return decisions / wall, usec / calls if calls else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small state and workload")
    parser.add_argument("--in-flight", type=int, default=4, help="batches in flight per tenant")
    args = parser.parse_args()
    dd.FLOWS, dd.AGENTS, dd.WAITING = (10, 100, 200) if args.quick else (20, 300, 1000)
    n = 200 if args.quick else 600   # reports per tenant (at most 2 per busy agent)
    cluster = RedisClusterServers().start()
    try:
        one = tenants_on(cluster, 1, "one")
        three = tenants_on(cluster, 3, "three")
        print(f"cluster: 3 masters + 3 replicas; {dd.FLOWS} flows, {dd.AGENTS} agents, {dd.WAITING} waiting "
              f"per tenant; {n} reports per tenant, batches of {BATCH}, {args.in_flight} in flight")
        rates = {}
        for label, tenants in (("1 master", one), ("3 masters", three)):
            rate, usec = run_case(cluster, tenants, n, args.in_flight)
            rates[label] = rate
            print(f"{label:<10} tenants {','.join(tenants):<24} {rate:>8.0f} decisions/s   "
                  f"{usec:>6.1f} µs per decision inside Redis")
        print(f"ratio 3 masters / 1 master: {rates['3 masters'] / rates['1 master']:.2f}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
