"""How late the dispatcher's timer loop fires a timer (issue 15: the loop sleeps until the first due
timer instead of polling every CC_TIMER_INTERVAL_MS).

A private redis-server, one flow with a maximum wait of 1 s and nobody logged in, and the
dispatcher's own timer loop (`run_timers`, its default interval) in this process. Calls arrive
through the report step at random moments, one every 0.1-0.7 s; each call's maximum-wait timer is
due 1 s after its arrival. A watcher reads the first due timer's member every millisecond from
300 ms before it is due: a timer's lateness is when it left the zset (fired) minus when it was due.
Printed: p50, p90, max over `--calls` calls, and the FCALLs the loop made per second.

    .venv/bin/python bench/timer_lateness.py [--calls 40]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import msgpack
import redis.asyncio as aioredis

from callcenter.settings import DispatcherSettings
from callcenter.store import Store, now_ms
from callcenter_dev.servers import RedisServer
from callcenter_dispatcher.timers import run_timers


async def run(args: argparse.Namespace) -> None:
    server = RedisServer().start()
    redis = aioredis.Redis.from_url(server.url)
    try:
        store = Store(redis, "late")
        await redis.hset(store.keys.config, mapping={"reject_on_no_agents": 0})
        await store.flow_upsert("f", {"skill": "s", "priority": 1, "queue_uri": "sip:q@127.0.0.1:9", "max_wait_s": 1})
        stop = asyncio.Event()
        interval = DispatcherSettings().timer_interval_ms
        loop = asyncio.create_task(run_timers(store, stop, interval))
        due: dict[str, int] = {}
        late: list[int] = []
        arriving = True

        async def watch() -> None:
            """The first due timer's member, read every millisecond from 300 ms before it is due."""
            while arriving or due:
                if not due:
                    await asyncio.sleep(0.005)
                    continue
                member, at = min(due.items(), key=lambda kv: kv[1])
                ahead_s = (at - now_ms()) / 1000 - 0.3
                if ahead_s > 0:
                    await asyncio.sleep(min(ahead_s, 0.05))
                elif await redis.zscore(store.keys.timers, member) is None:
                    late.append(now_ms() - due.pop(member))
                else:
                    await asyncio.sleep(0.001)

        await asyncio.sleep(0.5)
        await redis.config_resetstat()
        started = time.monotonic()
        watcher = asyncio.create_task(watch())
        rng = random.Random(15)
        for n in range(args.calls):
            await asyncio.sleep(rng.uniform(0.1, 0.7))
            call_id = f"c{n}"
            at = now_ms()
            data = msgpack.packb({"call_id": call_id, "edge": "e", "seq": 1, "ts": at, "flow": "f", "caller": "b",
                                  "caller_uri": "sip:b@127.0.0.1", "sip_call_id": call_id, "source": "127.0.0.1:5"})
            await store.apply_report("report.call_arrived", "1-1", data, now=at)
            due[f"maxwait|{call_id}"] = at + 1000
        arriving = False
        await watcher
        elapsed = time.monotonic() - started
        stats = await redis.info("commandstats")
        stop.set()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        late.sort()
        fcalls = stats.get("cmdstat_fcall", {}).get("calls", 0) - args.calls   # less the arrivals
        print(f"{len(late)} timers, interval {interval} ms: late p50 {late[len(late) // 2]} ms, "
              f"p90 {late[int(len(late) * 0.9)]} ms, max {late[-1]} ms; the loop's FCALLs "
              f"{fcalls / elapsed:.1f}/s over {elapsed:.1f} s")
    finally:
        await redis.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
