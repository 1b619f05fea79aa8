"""Dispatcher benchmark: decisions per second and agent-free -> ring latency, on realistic state.

State: 20 flows (one skill each), 500 agents (1-3 skills each), all busy in calls, and 2,000
waiting calls spread over the flows. A *decision* is one report applied by its Lua step:
- `report.call_ended` of a talking call (wrap-up 0): frees its agent, which takes the best waiting
  call of its skills (an offer + a ring command), in the same step;
- `report.agent_answered` for that offer;
- `report.call_arrived` of a new call, which queues (every agent is busy).

Printed, all measured in this run on the same private redis-server:
- raw FCALL rate of a trivial function (`return 1`), sequential and with 50 in flight: the baseline;
- Lua decision rate in-process, sequential and 50 in flight, and as a ratio of the baseline;
- whole dispatcher processes (1 and 2) draining a pre-filled report stream;
- latency from a call_ended report being appended to the ring command for the freed agent being on
  the edge's command stream, at a paced 1,000 reports/s through one dispatcher process (p50, p99).

    .venv/bin/python bench/dispatcher_decisions.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis

from callcenter.contract.codec import decode
from callcenter.store import Store
from callcenter_dev.processes import console_script
from callcenter_dev.producer import Producer
from callcenter_dev.servers import RedisServer

TENANT = "bench"
EDGE = "edge-bench"
FLOWS, AGENTS, WAITING = 20, 500, 2000


class World:
    """Builds the state and produces reports that are valid against it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seq: dict[str, int] = {}
        self.talking: dict[str, str] = {}   # call_id -> agent_id
        self.offers: dict[str, tuple[str, str]] = {}  # call_id -> (offer_id, agent_id)
        self.n = 0
        self.rng = random.Random(7)

    def report(self, rtype: str, call_id: str, **data: Any) -> bytes:
        seq = self.seq.get(call_id, 0) + 1
        self.seq[call_id] = seq
        return msgpack.packb({"call_id": call_id, "edge": EDGE, "seq": seq, "ts": 0, **data})

    def arrival(self) -> tuple[str, bytes]:
        self.n += 1
        call_id = f"c{self.n}"
        flow = f"f{self.rng.randrange(FLOWS)}"
        return "report.call_arrived", self.report("report.call_arrived", call_id, flow=flow, caller="bench",
                                                  caller_uri="sip:bench@127.0.0.1", sip_call_id=call_id,
                                                  source="127.0.0.1:1")

    async def build(self) -> None:
        st = self.store
        # agents ring at arrival: this World answers offers itself and plays no queue media (a
        # caller is offered only once on media otherwise, and the set-up below would wait for ever)
        await st.write_config({"wrapup_s": 0, "reject_on_no_agents": 0, "ring_timeout_s": 600,
                               "ring_before_media": 1})
        for f in range(FLOWS):
            await st.flow_upsert(f"f{f}", {"skill": f"s{f}", "priority": f % 3, "queue_uri": "sip:q@127.0.0.1:9"})
        for a in range(AGENTS):
            skills = sorted({f"s{self.rng.randrange(FLOWS)}" for _ in range(self.rng.randint(1, 3))})
            await st.agent_upsert(f"a{a}", f"sip:a{a}@127.0.0.1:9", skills, None)
            await st.agent_login(f"a{a}")
        # every agent gets a call and answers it: all busy
        while len(self.talking) < AGENTS:
            rtype, data = self.arrival()
            await st.apply_report(rtype, "0-0", data)
            await self.collect_offers()
            for call_id, (offer_id, agent_id) in list(self.offers.items()):
                await st.apply_report("report.agent_answered", "0-0",
                                      self.report("report.agent_answered", call_id, offer_id=offer_id,
                                                  agent_id=agent_id))
                self.talking[call_id] = agent_id
                del self.offers[call_id]
        for _ in range(WAITING):
            rtype, data = self.arrival()
            await st.apply_report(rtype, "0-0", data)
        await st.redis.delete(st.keys.commands(EDGE), st.keys.events)

    async def collect_offers(self) -> None:
        r = self.store.redis
        for eid, fields in await r.xrange(self.store.keys.commands(EDGE)):
            e = decode(fields, eid)
            if e.type == "command.ring":
                self.offers[e.data["call_id"]] = (e.data["offer_id"], e.data["agent_id"])
        await r.delete(self.store.keys.commands(EDGE))

    def workload(self, n: int) -> list[tuple[str, bytes]]:
        """N reports: end a talking call, answer the offer it causes (guessed: the freed agent takes
        a call; we answer offers lazily below), and a new arrival, in rotation."""
        out: list[tuple[str, bytes]] = []
        talking = list(self.talking.items())
        self.rng.shuffle(talking)
        while len(out) < n and talking:
            call_id, _agent = talking.pop()
            del self.talking[call_id]
            out.append(("report.call_ended", self.report("report.call_ended", call_id, by="caller", reason="bye")))
            out.append(self.arrival())
        return out[:n]


async def rate(fn: Any, items: list[Any], in_flight: int) -> float:
    sem = asyncio.Semaphore(in_flight)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)
    t0 = time.perf_counter()
    if in_flight == 1:
        for item in items:
            await fn(item)
    else:
        await asyncio.gather(*(one(i) for i in items))
    return len(items) / (time.perf_counter() - t0)


async def raw_baseline(r: aioredis.Redis, n: int) -> tuple[float, float]:
    await r.function_load("#!lua name=cc_bench_trivial\n"
                          "redis.register_function('cc_bench_trivial', function(keys, args) return 1 end)",
                          replace=True)
    seq = await rate(lambda _: r.fcall("cc_bench_trivial", 1, "cc:{bench}:x", 0), list(range(n)), 1)
    par = await rate(lambda _: r.fcall("cc_bench_trivial", 1, "cc:{bench}:x", 0), list(range(n)), 50)
    return seq, par


async def fresh_world(server: RedisServer) -> tuple[aioredis.Redis, Store, World]:
    r = aioredis.Redis.from_url(server.url)
    await r.flushall()
    store = Store(r, TENANT)
    world = World(store)
    await world.build()
    return r, store, world


async def lua_rates(server: RedisServer, n: int) -> tuple[float, float, float]:
    """Decisions per second in-process (sequential, 50 in flight), and the mean time one decision
    spends inside Redis (INFO commandstats, µs), to tell Lua time from client time."""
    results = []
    usec = 0.0
    for in_flight in (1, 50):
        r, store, world = await fresh_world(server)
        items = world.workload(n)
        await r.config_resetstat()
        # with 50 in flight, two reports of one call never race: each call appears once in a workload
        results.append(await rate(lambda it, st=store: st.apply_report(it[0], "0-0", it[1]), items, in_flight))
        stats = await r.info("commandstats")
        usec = float(stats.get("cmdstat_fcall", {}).get("usec_per_call", 0.0))
        await r.aclose()
    return results[0], results[1], usec


async def process_rate(server: RedisServer, n: int, processes: int) -> float:
    """Reports per second drained by `processes` dispatcher processes, timed from the moment the
    reports are appended (the processes are started and reading before that)."""
    r, store, world = await fresh_world(server)
    items = world.workload(n)
    env = {**os.environ, "CC_REDIS_URL": server.url, "CC_TENANT": TENANT, "CC_LOG_LEVEL": "warning",
           "CC_LOG_FORMAT": "json", "CC_WRAPUP_S": "0", "CC_REJECT_ON_NO_AGENTS": "false",
           "CC_RING_TIMEOUT_S": "600", "CC_BATCH": "200", "CC_BLOCK_MS": "100"}
    procs = [subprocess.Popen([console_script("dispatcher")], env={**env, "CC_CONSUMER": f"b{i}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(processes)]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every process has read once: it is up and waiting
            try:
                consumers = await r.xinfo_consumers(store.keys.reports, "dispatcher")
            except aioredis.ResponseError:
                consumers = []
            if len(consumers) == processes:
                break
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        async with r.pipeline(transaction=False) as pipe:
            for rtype, data in items:
                pipe.xadd(store.keys.reports, {"type": rtype, "v": 1, "data": data})
            await pipe.execute()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            groups = await r.xinfo_groups(store.keys.reports)
            if int(groups[0].get("lag") or 0) == 0 and int(groups[0]["pending"]) == 0 \
                    and int(groups[0].get("entries-read") or 0) >= len(items):
                break
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    await r.aclose()
    return len(items) / elapsed


async def latency(server: RedisServer, events_per_s: int, seconds: float) -> list[float]:
    r, store, world = await fresh_world(server)
    env = {**os.environ, "CC_REDIS_URL": server.url, "CC_TENANT": TENANT, "CC_LOG_LEVEL": "warning",
           "CC_LOG_FORMAT": "json", "CC_WRAPUP_S": "0", "CC_REJECT_ON_NO_AGENTS": "false",
           "CC_RING_TIMEOUT_S": "600", "CC_BLOCK_MS": "1000"}
    proc = subprocess.Popen([console_script("dispatcher")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    producer = Producer(r)
    sent: dict[str, float] = {}  # agent_id -> when its call_ended was appended
    lat: list[float] = []
    cmd_stream = store.keys.commands(EDGE)
    reader = aioredis.Redis.from_url(server.url)
    done = asyncio.Event()

    async def read_commands() -> None:
        last = "$"
        while not done.is_set():
            resp = await reader.xread({cmd_stream: last}, block=200, count=500)
            now = time.perf_counter()
            for _, entries in resp or []:
                for eid, fields in entries:
                    last = eid
                    e = decode(fields, eid)
                    t0 = sent.pop(e.data.get("agent_id", ""), None)
                    if e.type == "command.ring" and t0 is not None:
                        lat.append((now - t0) * 1000)

    await asyncio.sleep(1.0)  # the dispatcher connects and creates its group
    task = asyncio.create_task(read_commands())
    talking = list(world.talking.items())
    world.rng.shuffle(talking)
    n = min(int(events_per_s * seconds), len(talking))
    interval = 1 / events_per_s
    t_start = time.perf_counter()
    for i in range(n):
        call_id, agent_id = talking[i]
        target = t_start + i * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[agent_id] = time.perf_counter()
        data = {"call_id": call_id, "edge": EDGE, "seq": world.seq[call_id] + 1, "ts": 0, "by": "caller",
                "reason": "bye"}
        await producer.publish(store.keys.reports, "report.call_ended", data)
    await asyncio.sleep(1.0)
    done.set()
    await task
    proc.terminate()
    proc.wait(10)
    await reader.aclose()
    await r.aclose()
    return lat


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs (for a smoke check)")
    args = ap.parse_args()
    n = 2000 if args.quick else 10000
    server = RedisServer().start()
    try:
        r = aioredis.Redis.from_url(server.url)
        raw_seq, raw_par = await raw_baseline(r, n)
        await r.aclose()
        print(f"state: {FLOWS} flows, {AGENTS} agents (all busy), {WAITING} waiting calls; redis-server "
              f"{server.port}; python {sys.version.split()[0]}")
        print(f"raw FCALL 'return 1'          sequential {raw_seq:8.0f}/s   50 in flight {raw_par:8.0f}/s")
        lua_seq, lua_par, usec = await lua_rates(server, n)
        print(f"Lua decisions, in-process     sequential {lua_seq:8.0f}/s   50 in flight {lua_par:8.0f}/s   "
              f"ratio to raw: {lua_seq / raw_seq:.0%} / {lua_par / raw_par:.0%}")
        print(f"time inside Redis per decision (FCALL, commandstats): {usec:.0f} µs "
              f"= {usec * lua_seq / 1e6:.0%} of a sequential decision; the rest is the client round trip")
        for procs in (1, 2):
            rps = await process_rate(server, n, procs)
            print(f"dispatcher processes: {procs}      {rps:8.0f} reports/s drained   ratio to raw (50 in flight): "
                  f"{rps / raw_par:.0%}")
        lat = await latency(server, 1000, 0.45)  # 500 busy agents: at most 0.5 s of call ends
        print(f"agent free -> ring on the edge stream, 1,000 reports/s, one dispatcher: n={len(lat)} "
              f"p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms  max {max(lat) if lat else float('nan'):.2f} ms"
              f"  mean {statistics.fmean(lat) if lat else float('nan'):.2f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
