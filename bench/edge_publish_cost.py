"""The sip-edge's report publishing alone, on a private redis-server: CPU, commands and bytes per call.

The asyncio thread's share of a call, without SIP, SIPp or the other services, so that it can be
compared between two versions of the code on a shared machine (bench/edge_redis_commands.py
measures it in the whole system, where the load on the machine moves the batching and the CPU).
Each synthetic call is the edge's facts for a call of the stock bench (welcome media, then an
agent; bench/stock_calls.py): 5 reports and 7 checkpoint facts with dialog snapshots of the size
the edge writes, in 5 steps (arrival; welcome answered; agent rung; agent talking; end). A batch
holds one step of `--per-batch` calls (1: a transaction per step, as the edge at 50 calls/s under
MONITOR; at 100 calls/s it sends about one transaction per call, ~5 steps of different calls in
each), published in order through `ReportPublisher` (whatever version is on the path). Printed:
the publishing thread's CPU per call (`time.thread_time`; best of `--repeat`), and from the
redis-server's INFO the commands per call by name and the bytes it received per call.

    .venv/bin/python bench/edge_publish_cost.py [--quick-sends]
    PYTHONPATH=<other tree>/src:<other tree>/services/sip-edge .venv/bin/python bench/edge_publish_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from callcenter.contract.reports import AgentAnswered, CallArrived, CallEnded, MediaAnswered, MediaEnded
from callcenter.redis import connect
from callcenter.store.keys import Keys
from callcenter.stream_read import quick_sends
from callcenter_dev.servers import RedisServer
from callcenter_sip_edge.checkpoint import Checkpoints, DialogCheckpoint
from callcenter_sip_edge.publisher import ReportPublisher

EDGE = "edge-bench"
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")


def leg(call_id: str, who: str, cseq: int) -> dict[str, Any]:
    return {"call_id": f"{who}-{call_id}@127.0.0.1", "local": f"<sip:edge@127.0.0.1:5060>;tag={who}l{call_id}",
            "remote": f"<sip:{who}@127.0.0.1:5070>;tag={who}r{call_id}", "local_cseq": cseq, "remote_cseq": 1,
            "routes": [], "target": f"sip:{who}@127.0.0.1:5070", "next_hop": ["127.0.0.1", 5070],
            "transport": "udp", "contact": "<sip:edge@127.0.0.1:5060>", "local_sdp": SDP, "remote_sdp": SDP,
            "peers": []}


def invite(call_id: str, who: str) -> dict[str, Any]:
    return {"call_id": f"{who}-{call_id}@127.0.0.1", "cseq": 1, "target": f"sip:{who}@127.0.0.1:5070",
            "from": f"<sip:edge@127.0.0.1:5060>;tag={who}l{call_id}", "to": f"<sip:{who}@127.0.0.1:5070>",
            "next_hop": ["127.0.0.1", 5070], "branch": f"z9hG4bK{who}{call_id}"}


def call_steps(n: int) -> list[list[Any]]:
    """The facts of one call, grouped as the reactor turns that produce them."""
    c, seq = f"call-{n}", iter(range(1, 100))
    caller = leg(c, "caller", 1)
    return [
        [CallArrived(call_id=c, edge=EDGE, seq=next(seq), ts=1, flow="bench", caller="ann", caller_uri="sip:ann@x",
                     sip_call_id=f"{c}@x", source="127.0.0.1:5070"),
         DialogCheckpoint(c, {"uas": {"call_id": f"{c}@x", "cseq": 1, "via": "SIP/2.0/UDP 127.0.0.1:5070"}}),
         DialogCheckpoint(c, {"pending": [invite(c, "welcome")]})],
        [MediaAnswered(call_id=c, edge=EDGE, seq=next(seq), ts=2, purpose="welcome", uri="sip:welcome@x"),
         DialogCheckpoint(c, {"pending": [], "agent_id": None, "offer_id": None,
                              "legs": {"caller": caller, "media": leg(c, "welcome", 1)}}),
         DialogCheckpoint(c, {"uas": None})],
        [MediaEnded(call_id=c, edge=EDGE, seq=next(seq), ts=3, purpose="welcome"),
         DialogCheckpoint(c, {"pending": [invite(c, "agent")], "agent_id": None, "offer_id": None,
                              "legs": {"caller": caller, "media": leg(c, "welcome", 2)}})],
        [AgentAnswered(call_id=c, edge=EDGE, seq=next(seq), ts=4, offer_id=f"o-{n}", agent_id="a0001"),
         DialogCheckpoint(c, {"pending": [], "agent_id": "a0001", "offer_id": f"o-{n}", "timers": {},
                              "legs": {"caller": leg(c, "caller", 2), "agent": leg(c, "agent", 1)}}),
         DialogCheckpoint(c, {"pending": [], "agent_id": "a0001", "offer_id": f"o-{n}", "timers": {},
                              "legs": {"caller": leg(c, "caller", 2), "agent": leg(c, "agent", 1)}})],
        [CallEnded(call_id=c, edge=EDGE, seq=next(seq), ts=5, by="caller", reason="bye")],
    ]


def batches(calls: int, per_batch: int) -> list[list[Any]]:
    """Calls started `per_batch` at a time, each batch one step of each call in flight."""
    out: list[list[Any]] = []
    for first in range(0, calls, per_batch):
        group = [call_steps(n) for n in range(first, min(first + per_batch, calls))]
        for step in range(len(group[0])):
            out.append([fact for steps in group for fact in steps[step]])
    return out


async def commandstats(redis: aioredis.Redis) -> tuple[dict[str, int], int]:
    stats = await redis.info("commandstats")
    net = await redis.info("stats")
    return ({k.removeprefix("cmdstat_").upper(): int(v["calls"]) for k, v in stats.items()},
            int(net["total_net_input_bytes"]))


async def run(url: str, calls: int, per_batch: int, repeat: int, quick: bool) -> None:
    admin = connect(url)
    best = float("inf")
    counts: dict[str, int] = {}
    net_in = 0
    for r in range(repeat):
        await admin.flushall()
        client = connect(url)
        if quick:
            quick_sends(client)
        publisher = ReportPublisher(client, Keys("bench"), EDGE, Checkpoints(client, Keys("bench"), EDGE))
        work = batches(calls, per_batch)
        await publisher.publish(work[0][:1])   # connect first: not counted
        await admin.config_resetstat()
        before, net0 = await commandstats(admin)
        t0 = time.thread_time()
        for batch in work:
            await publisher.publish(batch)
        cpu = time.thread_time() - t0
        after, net1 = await commandstats(admin)
        await client.aclose()
        best = min(best, cpu)
        if r == 0:
            counts = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
            net_in = net1 - net0
    # the admin's own INFO/CONFIG calls are not the publisher's
    for name in ("INFO", "CONFIG|RESETSTAT", "CONFIG"):
        counts.pop(name, None)
    print(f"{calls} calls, {len(batches(calls, per_batch))} batches ({per_batch} calls' steps per batch); "
          f"{'quick sends; ' if quick else ''}"
          f"publisher from {Path(sys.modules[ReportPublisher.__module__].__file__ or '').parent}")
    print(f"  publishing thread CPU: {best * 1e6 / calls:.0f} us per call (best of {repeat})")
    print("  commands per call: " + ", ".join(f"{k} {n / calls:.2f}" for k, n in sorted(counts.items(),
                                                                                     key=lambda kv: -kv[1])))
    print(f"  all commands per call {sum(counts.values()) / calls:.2f}; bytes received by Redis per call "
          f"{net_in / calls:.0f}")
    await admin.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--per-batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick-sends", action="store_true",
                        help="the client's small sends without a timer task (stream_read.quick_sends, as the edge now)")
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        asyncio.run(run(server.url, args.calls, args.per_batch, args.repeat, args.quick_sends))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
