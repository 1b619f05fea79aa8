"""What one call asks of Redis, counted exactly: the commands each report step runs inside its
Redis Function, by command and by key touched (issue 15).

No timing, so the machine's load cannot move it. A private redis-server with one flow (welcome
media), `--agents` logged-in agents and wrap-up 0, as `bench/core_costs.py` sets them up; then
`--calls` calls, each driven through the Store (the dispatcher's `Store.apply_reports`, one
report per FCALL) with the reports `core_costs.py` plays: call_arrived, media_answered
(welcome), media_ended (welcome), agent_answered (the offer the step made), call_ended (the
caller hangs up). Redis' MONITOR sees every command a function runs ("lua" client): they are
grouped by the FCALL before them. Printed: per step, the mean number of `redis.call`s by command
and of distinct keys; per call, the totals and the statistics writes (HINCRBY and what goes to
the statistics and service-level hashes).

    .venv/bin/python bench/step_commands.py [--agents 50] [--calls 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import threading
from typing import Any

import msgpack
import redis
import redis.asyncio as aioredis

from callcenter.contract.codec import decode
from callcenter.store import Store
from callcenter_dev.bench_state import one_flow_with_agents
from callcenter_dev.servers import RedisServer

TENANT, EDGE, FLOW = "bench", "edge-count", "bench"
END = "step-commands-end"


def monitor(url: str, out: list[dict[str, Any]], ready: threading.Event) -> None:
    client = redis.Redis.from_url(url)
    with client.monitor() as m:
        ready.set()
        for cmd in m.listen():
            if END in cmd["command"]:
                return
            out.append(cmd)


async def drive(store: Store, calls: int) -> None:
    stream = store.keys.commands(EDGE)
    last = "0-0"

    async def commands() -> list[Any]:
        nonlocal last
        resp = await store.redis.xread({stream: last}, count=100)
        out = []
        for _, entries in resp or []:
            for eid, fields in entries:
                last = eid.decode() if isinstance(eid, bytes) else eid
                out.append(decode(fields, last))
        return out

    await commands()
    for n in range(calls):
        call_id = f"c{n}"
        seq = [0]

        async def report(rtype: str, call_id: str = call_id, seq: list[int] = seq, **data: Any) -> None:
            seq[0] += 1
            payload = {"call_id": call_id, "edge": EDGE, "seq": seq[0], "ts": store.clock(), **data}
            entry_id = f"{call_id.removeprefix('c')}-{seq[0]}"
            res = (await store.apply_reports([(rtype, entry_id, msgpack.packb(payload))]))[0]
            assert res.rc.name == "OK", (rtype, res)

        await report("report.call_arrived", flow=FLOW, caller=f"caller{n}", caller_uri=f"sip:caller{n}@127.0.0.1",
                     sip_call_id=f"{n}@bench", source="127.0.0.1:5060")
        media = [c for c in await commands() if c.type == "command.media"]
        await report("report.media_answered", purpose="welcome", uri=media[0].data["uri"])
        await report("report.media_ended", purpose="welcome")
        ring = [c for c in await commands() if c.type == "command.ring"]
        await report("report.agent_answered", offer_id=ring[0].data["offer_id"], agent_id=ring[0].data["agent_id"])
        await report("report.call_ended", by="caller", reason="bye")
        await commands()


def key_of(cmd: list[str]) -> list[str]:
    """The keys a command of the steps names (their first argument; XADD, XACK and the rest too)."""
    name = cmd[0].upper()
    if name in ("TIME", "ECHO") or len(cmd) < 2:
        return []
    return [cmd[1]]


async def run(args: argparse.Namespace) -> None:
    server = RedisServer().start()
    r = aioredis.Redis.from_url(server.url)
    try:
        store = Store(r, TENANT)
        await one_flow_with_agents(store, FLOW, args.agents)
        await store.edge_beat(EDGE, "step-commands", 10_000)
        await store.apply_reports([])  # nothing: the library is loaded by the first FCALL below
        seen: list[dict[str, Any]] = []
        ready = threading.Event()
        thread = threading.Thread(target=monitor, args=(server.url, seen, ready), daemon=True)
        thread.start()
        ready.wait(5)
        await drive(store, args.calls)
        await r.echo(END)
        thread.join(10)
    finally:
        await r.aclose()
        server.stop()

    per_step: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    keys_per_step: dict[str, int] = collections.Counter()
    key_names: dict[str, set[str]] = collections.defaultdict(set)  # per step, the keys as families
    steps: collections.Counter[str] = collections.Counter()
    stats_writes: collections.Counter[str] = collections.Counter()
    current, keys = "", set()
    for entry in seen:
        parts = entry["command"].split(" ")
        parts = [p.strip('"') for p in parts]
        lua = entry.get("client_type") == "lua"
        if not lua:
            if parts[0].upper() == "FCALL":
                if current:
                    keys_per_step[current] += len(keys)
                current = parts[1].split("_", 2)[2]
                keys = set()
                steps[current] += 1
            continue
        if not current.startswith("report_"):
            continue
        per_step[current][parts[0].upper()] += 1
        keys.update(key_of(parts))
        for key in key_of(parts):
            key_names[current].add(re.sub(r"(c|b)\d+$|edge-count|\d{5,}", "<id>", key.split(":", 2)[-1]))
        for key in key_of(parts):
            if ":stats" in key or ":sl:" in key:
                stats_writes[parts[0].upper()] += 1
    if current:
        keys_per_step[current] += len(keys)

    print(f"{args.calls} calls, {args.agents} agents; redis.call()s per step (mean), by command; distinct keys")
    total: collections.Counter[str] = collections.Counter()
    for step, counts in per_step.items():
        n = steps[step]
        line = ", ".join(f"{c} {v / n:g}" for c, v in counts.most_common())
        print(f"  {step:<24} {sum(counts.values()) / n:5.1f} calls, {keys_per_step[step] / n:4.1f} keys: {line}")
        total.update(counts)
        if args.keys:
            print("      keys: " + ", ".join(sorted(key_names[step])))
    calls = args.calls
    print(f"per call: {sum(total.values()) / calls:g} redis.call()s in the report steps, "
          f"{sum(keys_per_step.values()) / calls:g} keys touched (summed over steps)")
    print("  " + ", ".join(f"{c} {v / calls:g}" for c, v in total.most_common()))
    print("per call, statistics and service-level hashes: "
          + ", ".join(f"{c} {v / calls:g}" for c, v in stats_writes.most_common()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--keys", action="store_true", help="name the keys each step touches")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
