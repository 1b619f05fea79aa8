"""REGISTERs per second through the edge's registrar, and what idle registered agents cost.

A private redis-server and, in this process, a SipStack with its registrar (digest, bindings by
`sip_register.lua`); --agents agents provisioned with a SIP password. Phones (`callcenter_dev.
register_client`, UDP, one socket each) register every agent once, --clients at a time: each
registration is a challenge and an authenticated REGISTER (two round trips, one Lua step). Prints
registrations per second, p50/p99 of one registration, and then, with every agent registered and
idle: Redis memory per registration (INFO used_memory before and after) and this process's
resident memory per registration (the edge keeps nothing per registration but the nonce counts).

    .venv/bin/python bench/registrations.py                 # 2,000 agents, 8 phones at a time
    .venv/bin/python bench/registrations.py --agents 10000 --clients 16
    .venv/bin/python bench/registrations.py --quick         # 200 agents
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis.asyncio as aioredis

from callcenter.sip_credentials import credentials
from callcenter.store import Store
from callcenter_dev.register_client import RegisterClient
from callcenter_dev.servers import RedisServer, free_port
from callcenter_sip_edge.digest import Nonces
from callcenter_sip_edge.registrar import RegistrarOptions, RegistrarSetup
from callcenter_sip_edge.registrations import Registrations
from callcenter_sip_edge.sip_stack import SipStack

TENANT = "bench"
PASSWORD = "bench-password"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def register_range(port: int, agent_ids: list[str], algorithm: str) -> list[float]:
    took = []
    for agent_id in agent_ids:
        phone = RegisterClient(port, agent_id, PASSWORD)
        try:
            started = time.perf_counter()
            answer = phone.register(expires=3600, algorithm=algorithm)
            took.append(time.perf_counter() - started)
            assert answer.code == 200, answer
        finally:
            phone.close()
    return took


async def main(agents: int, clients: int, algorithm: str) -> None:
    server = RedisServer().start()
    redis = aioredis.Redis.from_url(server.url)
    stack: SipStack | None = None
    try:
        store = Store(redis, TENANT)
        for i in range(agents):
            agent_id = f"a{i}"
            await store.agent_upsert(agent_id, f"sip:{agent_id}@callcenter.test", ["sales"], None)
            await redis.hset(store.keys.sip_auth(agent_id), mapping=credentials(agent_id, "callcenter", PASSWORD))
        options = RegistrarOptions(domains=frozenset({"callcenter.test"}), rate=1e6, burst=1_000_000,
                                   max_registrations=agents + 10)
        regs = Registrations(redis, TENANT, "bench-edge", options, Nonces(None, 300))
        port = free_port(__import__("socket").SOCK_DGRAM)
        stack = SipStack(host="127.0.0.1", port=port, on_fact=lambda fact: None, loop=asyncio.get_running_loop(),
                         registrar=RegistrarSetup(options, regs.nonces, regs.submit))
        stack.start()
        memory_before = int((await redis.info("memory"))["used_memory"])
        rss_before = rss_bytes()
        ids = [f"a{i}" for i in range(agents)]
        chunks = [ids[i::clients] for i in range(clients)]
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(clients) as pool:
            results = await asyncio.gather(*(loop.run_in_executor(pool, register_range, port, chunk, algorithm)
                                             for chunk in chunks))
        wall = time.perf_counter() - started
        took = sorted(t for batch in results for t in batch)
        memory_after = int((await redis.info("memory"))["used_memory"])
        live = int(await redis.zcard(store.keys.registrations))
        print(f"registrar: {agents} agents, {clients} phones at a time, {algorithm}")
        print(f"  registered {len(took)} ({live} AORs live) in {wall:.2f} s = {len(took) / wall:,.0f} registrations/s"
              f" (each a challenge and an authenticated REGISTER)")
        print(f"  one registration: p50 {statistics.median(took) * 1000:.2f} ms, "
              f"p99 {took[int(len(took) * 0.99) - 1] * 1000:.2f} ms")
        print(f"  Redis memory per idle registration: {(memory_after - memory_before) / agents:,.0f} bytes "
              f"(used_memory {memory_before:,} -> {memory_after:,})")
        print(f"  edge process resident memory per registration: {(rss_bytes() - rss_before) / agents:,.0f} bytes "
              f"(includes the client threads of this process)")
    finally:
        if stack is not None:
            stack.stop()
        await redis.aclose()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--algorithm", choices=("MD5", "SHA-256"), default="SHA-256")
    parser.add_argument("--quick", action="store_true", help="200 agents")
    args = parser.parse_args()
    asyncio.run(main(200 if args.quick else args.agents, args.clients, args.algorithm))
