"""What each of the dispatcher's periodic steps costs inside Redis (issue 15: fixed cost per second).

A private redis-server with one flow, `--agents` agents logged in (free) and `--calls` calls brought
to talking through the report steps (arrived, welcome answered and ended, the agent offered and
answering), so the reconciler has live calls and busy agents to check, as at 100 calls/s. Then
each periodic step runs `--runs` times with nothing due, and INFO commandstats gives its µs inside
Redis per run (inner commands included) and its inner commands per run:
- fire_timers (the timer loop's pass),
- reconcile (the reconciler: every live call, every agent),
- registration_lapse (the registrations' lapse timer),
- the lost-edge check's ZRANGEBYSCORE on `cc:{t}:edges`.
Multiply by how often each runs (bench/idle_costs.py prints the rates) for its cost per second.

    .venv/bin/python bench/periodic_steps.py [--agents 1000] [--calls 300] [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import redis.asyncio as aioredis

from callcenter.store import RC, Store, now_ms
from callcenter_dev.bench_state import one_flow_with_agents
from callcenter_dev.servers import RedisServer

FLOW, EDGE = "bench", "edge-periodic"


async def talking(store: Store, calls: int) -> int:
    """Bring `calls` calls to talking; how many got there."""
    seq: dict[str, int] = {}

    async def report(rtype: str, call_id: str, **data: Any) -> Any:
        seq[call_id] = seq.get(call_id, 0) + 1
        payload = {"call_id": call_id, "edge": EDGE, "seq": seq[call_id], "ts": now_ms(), **data}
        return await store.apply_report(rtype, "0-1", msgpack.packb(payload))

    up = 0
    for n in range(calls):
        call_id = f"c{n}"
        await report("report.call_arrived", call_id, flow=FLOW, caller="bench", caller_uri="sip:bench@127.0.0.1",
                     sip_call_id=f"{n}@bench", source="127.0.0.1:5060")
        await report("report.media_answered", call_id, purpose="welcome", uri="sip:welcome@127.0.0.1:9")
        await report("report.media_ended", call_id, purpose="welcome")
        call = await store.call(call_id)
        if call is None or call.get("state") != "offered":
            continue
        res = await report("report.agent_answered", call_id, offer_id=call["offer"], agent_id=call["agent"])
        up += res.rc is RC.OK
    return up


async def cost(redis: aioredis.Redis, runs: int, step: Callable[[], Awaitable[object]]) -> tuple[float, str]:
    """(µs inside Redis per run, the commands per run) of `step`."""
    await redis.config_resetstat()
    for _ in range(runs):
        await step()
    stats = await redis.info("commandstats")
    total = sum(v["usec"] for k, v in stats.items() if k not in ("cmdstat_config|resetstat", "cmdstat_info"))
    lua = {k.removeprefix("cmdstat_"): v["calls"] / runs for k, v in stats.items()
           if k not in ("cmdstat_config|resetstat", "cmdstat_info", "cmdstat_fcall")}
    inner = ", ".join(f"{name} {n:g}" for name, n in sorted(lua.items(), key=lambda kv: -kv[1]))
    return total / runs, inner


async def run(args: argparse.Namespace) -> None:
    server = RedisServer().start()
    redis = aioredis.Redis.from_url(server.url)
    try:
        store = Store(redis, "bench")
        await one_flow_with_agents(store, FLOW, args.agents)
        await store.edge_beat(EDGE, "periodic", 60_000)
        up = await talking(store, args.calls)
        print(f"{args.agents} agents, {up} calls talking; {args.runs} runs of each step, nothing due")
        steps: dict[str, Callable[[], Awaitable[object]]] = {
            "fire_timers": lambda: store.fire_timers(limit=200),
            "reconcile": lambda: store.reconcile(edge_lapse_ms=5000),
            "registration_lapse": lambda: store.registration_lapse(),
            "edges ZRANGEBYSCORE": lambda: redis.zrangebyscore(store.keys.edges, "-inf", f"({now_ms() - 5000}"),
        }
        for rnd in range(2):
            for name, step in steps.items():
                us, inner = await cost(redis, args.runs, step)
                print(f"  round {rnd + 1}  {name:20s} {us:8.1f} µs inside Redis per run   ({inner})")
    finally:
        await redis.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=50)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
