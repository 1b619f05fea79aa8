"""CDR writer throughput into PostgreSQL against a plain batched INSERT of the same rows, same run.

A private redis-server and a private PostgreSQL (devtools). `--calls` calls are appended to
`cc:{bench}:events` as the dispatcher would write them: per call `call.arrived`, `call.offered`,
for every `--attempt-every`-th call a numbered `call.agent_failed` (an attempt row), `call.connected`
and `call.ended` (the final row); the other event types are acknowledged without a row, as in
production. Then, each into a fresh database migrated to head:

1. baseline: the same rows (built by the writer's own `cdr_row` from the same entries, so the
   values are identical) inserted with a plain `INSERT INTO cdrs ... VALUES` executemany,
   `--rows-per-insert` rows per transaction, no stream, no idempotency;
2. writer: `callcenter.bus.StreamConsumer` + `CdrWriter` exactly as the service runs them
   (XREADGROUP of `--batch` entries = CC_BATCH, decode, idempotent insert of the batch's rows in
   one transaction, XACK after the commit), from the first read until the group has acknowledged
   every entry; each `--batch` given (comma-separated) is a run of its own into a fresh database.

Only about one entry in four is a CDR row (arrived, offered, connected are not), so a read of 100
entries makes a transaction of about 28 rows: the writer's rate depends on CC_BATCH mostly through
the number of transactions. Printed: rows/s of each, the writer's transactions and rows per
transaction, and its rate as a share of the baseline's.

    .venv/bin/python bench/cdr_writer.py [--quick] [--calls 20000] [--batch 400,100] [--rows-per-insert 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import Engine, insert

from callcenter.bus import StreamConsumer
from callcenter.contract.codec import Entry, decode
from callcenter.db.engine import make_engine, upgrade
from callcenter.db.models import Cdr
from callcenter.store.keys import Keys
from callcenter_cdr_writer.writer import CDR_TYPES, CdrWriter, cdr_row
from callcenter_dev.postgres import PostgresServer, find_bindir
from callcenter_dev.producer import Producer
from callcenter_dev.servers import RedisServer

TENANT = "bench"
KEYS = Keys(TENANT)
GROUP = "cdr-writer"
T0 = 1_764_000_000_000


def call_events(i: int, attempt: bool) -> list[tuple[str, dict[str, Any]]]:
    """The events of one call, as the Lua steps write them (the fields the writer reads)."""
    call_id = f"{i:032x}"
    received = T0 + i * 10
    cdr = {"caller": f"caller{i}", "received_ms": received, "media_type": "audio", "sip_call_id": f"{i}@bench",
           "edge": "edge-0", "priority": 0}
    out: list[tuple[str, dict[str, Any]]] = [
        ("call.arrived", {"ts": received, "call_id": call_id, "flow": "sales", "caller": f"caller{i}",
                          "edge": "edge-0", "media_type": "audio", "sip_call_id": f"{i}@bench"}),
        ("call.offered", {"ts": received, "call_id": call_id, "flow": "sales", "agent_id": "a1", "offer_id": "1"}),
    ]
    if attempt:
        out += [("call.agent_failed", {"ts": received + 4000, "call_id": call_id, "flow": "sales", "agent_id": "a1",
                                       "offer_id": "1", "reason": "rejected", "attempt": 1, "ring_ms": 4000,
                                       "wait_ms": 4000, "rejections": 0, "queue_position": 0, **cdr}),
                ("call.offered", {"ts": received + 4000, "call_id": call_id, "flow": "sales", "agent_id": "a2",
                                  "offer_id": "2"})]
    out += [
        ("call.connected", {"ts": received + 6000, "call_id": call_id, "flow": "sales", "agent_id": "a2",
                            "wait_ms": 6000}),
        ("call.ended", {"ts": received + 66_000, "call_id": call_id, "flow": "sales", "outcome": "answered",
                        "ended_by": "caller", "reason": "bye", "wait_ms": 6000, "pickup_ms": 2000, "talk_ms": 60_000,
                        "rejections": 1 if attempt else 0, "agent_id": "a2", "attempts": 1 if attempt else 0,
                        "offers": 2 if attempt else 1, "queue_position": 0, "hold_ms": 6000, **cdr}),
    ]
    return out


async def fill(redis: aioredis.Redis, calls: int, attempt_every: int) -> list[Entry]:
    producer = Producer(redis)
    for i in range(calls):
        for etype, data in call_events(i, attempt_every > 0 and i % attempt_every == 0):
            await producer.publish(KEYS.events, etype, data)
    raw: Any = await redis.xrange(KEYS.events)
    return [decode(fields, entry_id) for entry_id, fields in raw]


def fresh(server: PostgresServer, name: str) -> Engine:
    url = server.create_database(name)
    upgrade(url)
    return make_engine(url)


def baseline(engine: Engine, rows: list[dict[str, Any]], batch: int) -> float:
    """Seconds to insert `rows` with a plain batched INSERT (executemany), one transaction per batch."""
    stmt = insert(Cdr)
    started = time.perf_counter()
    for at in range(0, len(rows), batch):
        with engine.begin() as conn:
            conn.execute(stmt, rows[at:at + batch])
    return time.perf_counter() - started


async def through_writer(redis: aioredis.Redis, engine: Engine, entries: int, batch: int) -> tuple[float, CdrWriter]:
    """Seconds for the writer to read, store and acknowledge every entry of the stream."""
    writer = CdrWriter(engine, TENANT)
    consumer = StreamConsumer(redis, stream=KEYS.events, group=GROUP, consumer="bench", handler=writer,
                              dead_stream=KEYS.dead, batch=batch, block_ms=50, types=CDR_TYPES)
    await consumer.ensure_group()
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    try:
        while True:
            groups: Any = await redis.xinfo_groups(KEYS.events)
            group = next(g for g in groups if g["name"] == GROUP.encode())
            if int(group["entries-read"] or 0) == entries and not group["pending"]:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 30)
    return elapsed, writer


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--batch", default="400,100",
                        help="the writer's entries per read (CC_BATCH; 400 is the default), comma-separated")
    parser.add_argument("--rows-per-insert", type=int, default=100, help="the baseline's rows per transaction")
    parser.add_argument("--attempt-every", type=int, default=4,
                        help="every n-th call has one agent attempt that did not connect (0: none)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (1,000 calls)")
    args = parser.parse_args(argv)
    calls = 1000 if args.quick else args.calls
    if find_bindir() is None:
        print("PostgreSQL is not installed (scripts/bootstrap.sh --with-postgres)", file=sys.stderr)
        return 2
    redis_server, pg = RedisServer().start(), PostgresServer().start()
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        entries = await fill(redis, calls, args.attempt_every)
        rows = [row for row in (cdr_row(e, TENANT) for e in entries) if row is not None]
        base_engine = fresh(pg, "baseline")
        try:
            base_s = baseline(base_engine, rows, args.rows_per_insert)
        finally:
            base_engine.dispose()
        base_rate = len(rows) / base_s
        print(f"stream: {len(entries)} entries, {calls} calls, {len(rows)} CDR rows "
              f"({len(rows) - calls} attempt rows)")
        print(f"plain batched INSERT         {len(rows)} rows in {base_s:.2f} s  {base_rate:,.0f} rows/s  "
              f"({args.rows_per_insert} rows per transaction)")
        for batch in (int(b) for b in args.batch.split(",")):
            await redis.xgroup_destroy(KEYS.events, GROUP)
            writer_engine = fresh(pg, f"writer{batch}")
            try:
                writer_s, writer = await through_writer(redis, writer_engine, len(entries), batch)
            finally:
                writer_engine.dispose()
            if writer.written != len(rows) or writer.dead:
                print(f"writer wrote {writer.written} of {len(rows)} rows, {writer.dead} dead", file=sys.stderr)
                return 1
            writer_rate = len(rows) / writer_s
            print(f"cdr-writer CC_BATCH={batch:<5}    {len(rows)} rows in {writer_s:.2f} s  {writer_rate:,.0f} rows/s  "
                  f"({writer.transactions} transactions, {len(rows) / writer.transactions:.0f} rows each)  "
                  f"{100 * writer_rate / base_rate:.0f}% of the plain INSERT")
    finally:
        await redis.aclose()
        redis_server.stop()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
