"""Where the time of one report step goes inside Redis: prelude, library modules, body (issue 15).

A private redis-server with one flow and `--agents` logged-in agents. Each call runs
`report.call_arrived` then `report.media_answered` (welcome) through an instrumented copy of their
scripts: `redis.call('TIME')` markers after the generated prelude, after each library module, and
around the step's body. Printed per script: the mean µs of each segment over `--calls` calls,
with the cost of one marker (two markers back to back) taken off each segment. The markers read the
server clock, so the machine's load shows in the figures; the shares are what to compare.

Then the same two steps, uninstrumented, both ways on fresh tenants (two rounds, alternating): as a
standalone script by EVALSHA (`load_source`: the prelude and the modules run on every call) and as
the Redis Functions the Store calls (FCALL of `store.sources.library()`: modules run once, at
load). Printed: µs inside Redis per step from INFO commandstats (inner commands included).

    .venv/bin/python bench/lua_step_costs.py [--agents 50] [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import defaultdict

import msgpack
import redis.asyncio as aioredis

from callcenter.store import Store
from callcenter.store.scripts import LIB_ORDER, load_source, script_libs
from callcenter_dev.bench_state import one_flow_with_agents
from callcenter_dev.servers import RedisServer

MARK = "__T[#__T + 1] = redis.call('TIME')\n"
SCRIPTS = {
    "report_call_arrived": {"flow": "bench", "caller": "x", "caller_uri": "sip:x@127.0.0.1",
                            "source": "127.0.0.1:5060"},
    "report_media_answered": {"purpose": "welcome", "uri": "sip:w@127.0.0.1:9"},
}


def instrumented(name: str) -> tuple[str, list[str]]:
    """The script's source with markers, and the names of the segments between them."""
    src = load_source(name)
    step = src.index("local function step()")
    body = step + len("local function step()\n")
    first_lib = min(src.index(f"-- {m}.lua:") for m in script_libs(name))
    libs = [p for p in re.split(r"(?m)^(?=-- [a-z]+\.lua: )", src[first_lib:step]) if p]
    names = ["prelude"]
    parts = ["local __T = {}\n", MARK, src[:first_lib], MARK]
    for piece in libs:
        parts += [piece, MARK]
        names.append(piece.split(".lua:", 1)[0].removeprefix("-- ") + " module")
    parts += [src[step:body], MARK, src[body:]]
    names += ["step wrapper", "body, preflight and inner commands"]
    out = "".join(parts).replace("\nreturn run_report_step(step)\n",
                                 "\nlocal __r = run_report_step(step)\n" + MARK + "return { __r, __T }\n")
    assert all(m in LIB_ORDER for m in script_libs(name))
    return out, names


async def provision(r: aioredis.Redis, tenant: str, agents: int) -> Store:
    store = Store(r, tenant)
    await one_flow_with_agents(store, "bench", agents)
    return store


def report(call_id: str, seq: int, name: str) -> bytes:
    extra = {"sip_call_id": call_id} if name == "report_call_arrived" else {}
    raw = msgpack.packb({"call_id": call_id, "edge": "e1", "seq": seq, "ts": int(time.time() * 1000),
                         **SCRIPTS[name], **extra})
    assert isinstance(raw, bytes)
    return raw


async def both_ways(r: aioredis.Redis, args: argparse.Namespace) -> None:
    """µs inside Redis per step: EVALSHA of the standalone script vs FCALL of the library."""
    shas = {name: await r.script_load(load_source(name)) for name in SCRIPTS}
    usec: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rnd in (1, 2):
        for way in ("evalsha", "fcall"):
            store = await provision(r, f"{way}{rnd}", args.agents)
            for seq, name in enumerate(SCRIPTS, 1):
                await r.config_resetstat()
                for n in range(args.calls):
                    ts, data = int(time.time() * 1000), report(f"c{n}", seq, name)
                    if way == "evalsha":
                        res = await r.evalsha(shas[name], 1, store.keys.events, ts, "1-1", data)
                    else:
                        res = await r.fcall(store.library.functions[name], 1, store.keys.events, ts, "1-1", data)
                    assert int(res[0]) == 0, res
                stats = (await r.info("commandstats")).get(f"cmdstat_{way}", {})
                usec[(name, way)].append(float(stats.get("usec_per_call", 0.0)))
    print("inside Redis per step (INFO commandstats, inner commands included), rounds 1 and 2:")
    for name in SCRIPTS:
        ev, fc = usec[(name, "evalsha")], usec[(name, "fcall")]
        saved = 100 * (1 - sum(fc) / max(sum(ev), 1e-9))
        print(f"   {name:<24} EVALSHA {' '.join(f'{u:6.1f}' for u in ev)} µs   "
              f"FCALL {' '.join(f'{u:6.1f}' for u in fc)} µs   ({saved:.0f} % less)")


async def run(args: argparse.Namespace) -> None:
    server = RedisServer().start()
    r = aioredis.Redis.from_url(server.url)
    try:
        store = await provision(r, "bench", args.agents)
        marker_sha = await r.script_load("local __T = {}\n" + MARK + MARK + "return __T")
        shas, names = {}, {}
        for name in SCRIPTS:
            source, names[name] = instrumented(name)
            shas[name] = await r.script_load(source)
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0] * 32)
        marker = 0.0
        for n in range(args.calls):
            pair = await r.evalsha(marker_sha, 1, store.keys.events)
            marker += (int(pair[1][0]) - int(pair[0][0])) * 1e6 + int(pair[1][1]) - int(pair[0][1])
            for seq, name in enumerate(SCRIPTS, 1):
                raw = report(f"c{n}", seq, name)
                res = await r.evalsha(shas[name], 1, store.keys.events, int(time.time() * 1000), "1-1", raw)
                stamps = [int(s) * 1_000_000 + int(us) for s, us in res[1]]
                for i in range(1, len(stamps)):
                    sums[name][i - 1] += stamps[i] - stamps[i - 1]
        marker /= args.calls
        print(f"{args.calls} calls, {args.agents} agents; one TIME marker costs {marker:.1f} µs (taken off below)")
        for name, segs in names.items():
            means = [max(sums[name][i] / args.calls - marker, 0.0) for i in range(len(segs))]
            total = sum(means)
            print(f"{name}: {total:.0f} µs per step")
            for seg, us in zip(segs, means, strict=True):
                print(f"   {seg:<38} {us:7.1f} µs  {us * 100 / max(total, 1e-9):5.1f} %")
        await both_ways(r, args)
    finally:
        await r.aclose()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--calls", type=int, default=300)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
