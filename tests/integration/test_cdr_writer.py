"""The cdr-writer against a real redis-server and each SQL backend (a temporary SQLite file, a
temporary PostgreSQL, a temporary MariaDB): `call.ended` and numbered `call.agent_failed` events in,
exactly one CDR row per call and attempt out, poison entries dead-lettered, the next ones written."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from callcenter.bus import Outcome, StreamConsumer, Verdict
from callcenter.contract.codec import Entry, decode, encode
from callcenter.db.engine import make_engine, upgrade
from callcenter.db.models import Cdr
from callcenter.settings import CdrWriterSettings
from callcenter.store import Store
from callcenter.store.keys import Keys
from callcenter_cdr_writer.main import GROUP, run
from callcenter_cdr_writer.writer import CdrWriter
from callcenter_dev.processes import console_script
from callcenter_dev.producer import Producer
from callcenter_dev.servers import RedisServer

TENANT = "cdr"
KEYS = Keys(TENANT)
T0 = 1_740_830_400_000  # 2025-03-01T12:00:00Z in ms


def ended(call_id: str, **over: Any) -> dict[str, Any]:
    data = {"ts": T0 + 60_000, "call_id": call_id, "flow": "sales", "caller": "bob", "outcome": "answered",
            "ended_by": "caller", "reason": "bye", "received_ms": T0, "wait_ms": 4000, "pickup_ms": 1500,
            "talk_ms": 55_000, "rejections": 1, "agent_id": "alice"}
    data.update(over)
    return data


async def wait_for(predicate: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def rows(engine: Engine, call_id: str | None = None) -> list[Cdr]:
    with Session(engine) as session:
        query = select(Cdr).order_by(Cdr.id)
        if call_id is not None:
            query = query.where(Cdr.call_id == call_id)
        return list(session.scalars(query))


async def pending(redis: aioredis.Redis) -> int:
    """Entries read by the group and not yet acknowledged; -1 before the group exists."""
    try:
        return int((await redis.xpending(KEYS.events, GROUP))["pending"])
    except aioredis.ResponseError:
        return -1


async def drained(redis: aioredis.Redis) -> bool:
    """The group has read every entry of the stream and acknowledged (or dead-lettered) them all."""
    try:
        groups = await redis.xinfo_groups(KEYS.events)
    except aioredis.ResponseError:
        return False
    group = next((g for g in groups if g["name"] == GROUP.encode()), None)
    if group is None or group["pending"]:
        return False
    return int(group["entries-read"] or 0) == int(await redis.xlen(KEYS.events))


async def dead_entries(redis: aioredis.Redis) -> list[dict[str, Any]]:
    raw: Any = await redis.xrange(KEYS.dead)
    return [{k.decode(): v for k, v in f.items()} for _, f in raw]


async def read_as(redis: aioredis.Redis, name: str) -> list[Entry]:
    """Read new entries as consumer `name` without acknowledging them (a consumer about to die)."""
    resp: Any = await redis.xreadgroup(GROUP, name, {KEYS.events: ">"}, count=10)
    return [decode(fields, entry_id) for entry_id, fields in resp[0][1]]


def packed(type_name: str, data: dict[str, Any]) -> bytes:
    raw = encode(type_name, data)["data"]
    assert isinstance(raw, bytes)
    return raw


@pytest.fixture
def db_url(sql_url: str) -> str:
    """A migrated database, once per SQL backend."""
    upgrade(sql_url)
    upgrade(sql_url)  # every start migrates: the second run is a no-op
    return sql_url


@contextmanager
def engine_of(url: str) -> Iterator[Engine]:
    eng = make_engine(url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    with engine_of(db_url) as eng:
        yield eng


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLite only: for the tests of the process and of Redis, where the SQL backend changes nothing."""
    url = f"sqlite:///{tmp_path / 'cdr.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    with engine_of(sqlite_url) as eng:
        yield eng


@pytest.fixture
async def service(redis: aioredis.Redis, redis_server: RedisServer, db_url: str) -> AsyncIterator[None]:
    """The cdr-writer service, in-process, with fast timings."""
    settings = CdrWriterSettings(redis_url=redis_server.url, tenant=TENANT, database_url=db_url,
                                 consumer="w1", block_ms=50, claim_idle_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    yield
    stop.set()
    await asyncio.wait_for(task, 10)


def consumer(redis: aioredis.Redis, name: str, writer: CdrWriter, **kw: Any) -> StreamConsumer:
    return StreamConsumer(redis, stream=KEYS.events, group=GROUP, consumer=name, handler=writer,
                          dead_stream=KEYS.dead, block_ms=50, **kw)


async def victim_commits_and_dies(redis: aioredis.Redis, engine: Engine) -> tuple[list[Entry], dict[str, Verdict]]:
    """A writer reads the stream's new entries and commits their rows, then dies before its XACK
    (and before acting on its verdicts): the entries stay pending under `victim`."""
    await consumer(redis, "victim", CdrWriter(engine)).ensure_group()
    entries = await read_as(redis, "victim")
    return entries, dict(await CdrWriter(engine)(entries))


async def rescue(redis: aioredis.Redis, engine: Engine) -> CdrWriter:
    """Another consumer reclaims what the victim left pending (XAUTOCLAIM) until nothing is; its writer."""
    writer = CdrWriter(engine)
    rescuer = consumer(redis, "rescuer", writer, claim_idle_ms=100)
    task = asyncio.create_task(rescuer.run())
    try:
        async def rescued() -> bool:
            return await pending(redis) == 0

        await wait_for(rescued)
    finally:
        rescuer.request_stop()
        await asyncio.wait_for(task, 5)
    return writer


async def test_call_ended_events_become_rows(redis: aioredis.Redis, service: None, engine: Engine) -> None:
    producer = Producer(redis)
    await producer.publish(KEYS.events, "agent.logged_in", {"ts": T0, "agent_id": "alice"})
    await producer.publish(KEYS.events, "call.ended", ended("c1"))
    await producer.publish(KEYS.events, "call.connected",
                           {"ts": T0, "call_id": "c2", "flow": "sales", "agent_id": "alice", "wait_ms": 1})
    # a real summary, emitted by the Lua step: a caller who hangs up while queued
    store = Store(redis, TENANT)
    await store.flow_upsert("sales", {"skill": "s", "queue_uri": "sip:q@127.0.0.1"})
    await store.write_config({"reject_on_no_agents": 0})
    arrival = {"call_id": "c2", "edge": "e1", "seq": 1, "ts": 1, "flow": "sales", "caller": "carol",
               "caller_uri": "sip:carol@127.0.0.1", "sip_call_id": "x", "source": "127.0.0.1:5"}
    await store.apply_report("report.call_arrived", "1-1", packed("report.call_arrived", arrival),
                             now=T0)
    bye = {"call_id": "c2", "edge": "e1", "seq": 2, "ts": 2, "by": "caller", "reason": "bye"}
    await store.apply_report("report.call_ended", "1-2", packed("report.call_ended", bye), now=T0 + 7000)

    async def written() -> bool:
        return len(rows(engine)) == 2 and await drained(redis)

    await wait_for(written)
    c1, c2 = rows(engine)
    assert (c1.call_id, c1.flow_id, c1.caller, c1.agent_id, c1.outcome, c1.ended_by, c1.reason) == (
        "c1", "sales", "bob", "alice", "answered", "caller", "bye")
    assert (c1.wait_ms, c1.pickup_ms, c1.talk_ms, c1.rejections) == (4000, 1500, 55_000, 1)
    assert c1.received_at.isoformat() == "2025-03-01T12:00:00+00:00"
    assert c1.event_id and c1.event_id != c2.event_id
    assert (c2.call_id, c2.caller, c2.agent_id, c2.outcome, c2.wait_ms, c2.talk_ms) == (
        "c2", "carol", None, "abandoned", 7000, 0)
    assert await dead_entries(redis) == []


async def test_a_row_per_attempt_that_did_not_connect_and_a_final_row(redis: aioredis.Redis, engine: Engine) -> None:
    """Real Lua steps: an agent rejects, the next answers; the writer writes the attempt row (that
    agent, its ring time, call_type -2) and the final row with the reference's meaning and ours."""
    store = Store(redis, TENANT)
    # no queue media: the free agent is offered the call at once (media first concerns queue media)
    await store.flow_upsert("sales", {"skill": "s"}, now=T0)
    for agent_id in ("a1", "a2"):
        await store.agent_upsert(agent_id, f"sip:{agent_id}@127.0.0.1", ["s"], 30, now=T0)
        await store.agent_login(agent_id, now=T0)
    report = {"call_id": "c1", "edge": "e1", "ts": T0}
    arrival = {**report, "seq": 1, "flow": "sales", "caller": "carol", "caller_uri": "sip:carol@127.0.0.1",
               "sip_call_id": "abc@127.0.0.1", "source": "127.0.0.1:5", "priority": 5}
    await store.apply_report("report.call_arrived", "1-1", packed("report.call_arrived", arrival), now=T0)
    raw: Any = await redis.xrange(KEYS.events)
    offered = [decode(f, i).data for i, f in raw if f[b"type"] == b"call.offered"]
    first = offered[0]["agent_id"]
    second = "a2" if first == "a1" else "a1"
    failed = {**report, "ts": T0 + 2000, "seq": 2, "offer_id": "1", "agent_id": first, "reason": "rejected",
              "code": 603}
    await store.apply_report("report.agent_failed", "1-2", packed("report.agent_failed", failed), now=T0 + 2000)
    answered = {**report, "ts": T0 + 4000, "seq": 3, "offer_id": "2", "agent_id": second}
    await store.apply_report("report.agent_answered", "1-3", packed("report.agent_answered", answered), now=T0 + 4000)
    bye = {**report, "ts": T0 + 64_000, "seq": 4, "by": "agent", "reason": "bye"}
    await store.apply_report("report.call_ended", "1-4", packed("report.call_ended", bye), now=T0 + 64_000)

    raw = await redis.xrange(KEYS.events)
    entries = [decode(f, i) for i, f in raw]
    writer = CdrWriter(engine, TENANT)
    verdicts = await writer(entries)
    assert {v.outcome for v in verdicts.values()} == {Outcome.ACK}
    assert (writer.written, writer.duplicates) == (2, 0)
    attempt, final = rows(engine)
    common = ("c1", "sales", "carol", T0, "abc@127.0.0.1", "e1", TENANT, 5, "audio")

    def key(row: Cdr) -> tuple[Any, ...]:
        return (row.call_id, row.flow_id, row.caller, int(row.received_at.timestamp() * 1000), row.sip_call_id,
                row.edge, row.tenant, row.priority, row.media_type)

    assert key(attempt) == key(final) == common
    assert (attempt.attempt, attempt.agent_id, attempt.outcome, attempt.ended_by, attempt.reason, attempt.call_type,
            attempt.fstats, attempt.wait_ms, attempt.pickup_ms, attempt.talk_ms, attempt.rejections) == (
        1, first, "not_connected", "agent", "rejected", -2, 3, 2000, 2000, 0, 0)
    assert (final.attempt, final.agent_id, final.outcome, final.ended_by, final.reason, final.call_type, final.fstats,
            final.wait_ms, final.pickup_ms, final.talk_ms, final.rejections, final.queue_position, final.hold_ms) == (
        0, second, "answered", "agent", "bye", 0, 7, 4000, 2000, 60_000, 1, None, None)

    again = CdrWriter(engine, TENANT)  # the same entries delivered again: no second row
    await again(entries)
    assert (again.written, again.duplicates, len(rows(engine))) == (0, 2, 2)


def attempt_failed(call_id: str, attempt: int, **over: Any) -> dict[str, Any]:
    data = {"ts": T0 + 3000, "call_id": call_id, "flow": "sales", "agent_id": "bob", "offer_id": str(attempt),
            "reason": "no_answer", "attempt": attempt, "ring_ms": 3000, "caller": "carol", "received_ms": T0,
            "wait_ms": 3000, "rejections": attempt - 1}
    data.update(over)
    return data


@pytest.mark.parametrize("final_first", [True, False])
async def test_final_and_attempt_rows_in_one_batch_keep_every_column(redis: aioredis.Redis, engine: Engine,
                                                                      final_first: bool) -> None:
    producer = Producer(redis)
    events = [("call.ended", ended("c1", hold_ms=2500, queue_position=3, dissuaded_rule="ewt",
                                   overflow_to_flow="spill", sip_call_id="s1", edge="e1", priority=7)),
              ("call.agent_failed", attempt_failed("c2", 1))]
    for etype, data in events if final_first else reversed(events):
        await producer.publish(KEYS.events, etype, data)
    raw: Any = await redis.xrange(KEYS.events)
    verdicts = await CdrWriter(engine, TENANT)([decode(f, i) for i, f in raw])
    assert {v.outcome for v in verdicts.values()} == {Outcome.ACK}
    final = rows(engine, "c1")[0]
    assert (final.hold_ms, final.queue_position, final.dissuaded_rule, final.overflow_to_flow, final.sip_call_id,
            final.edge, final.priority, final.tenant) == (2500, 3, "ewt", "spill", "s1", "e1", 7, TENANT)
    attempt = rows(engine, "c2")[0]
    assert (attempt.attempt, attempt.pickup_ms, attempt.hold_ms, attempt.outcome, attempt.ended_by) == (
        1, 3000, None, "not_connected", "system")


async def test_an_attempt_event_from_before_numbering_is_no_row(redis: aioredis.Redis, engine: Engine) -> None:
    producer = Producer(redis)
    await producer.publish(KEYS.events, "call.agent_failed", {"ts": T0, "call_id": "old", "flow": "sales",
                                                              "agent_id": "a1", "offer_id": "1", "reason": "busy"})
    raw: Any = await redis.xrange(KEYS.events)
    verdicts = await CdrWriter(engine)([decode(f, i) for i, f in raw])
    assert [v.outcome for v in verdicts.values()] == [Outcome.ACK] and rows(engine) == []


async def test_redelivered_call_ended_writes_no_second_row(redis: aioredis.Redis, service: None,
                                                           engine: Engine) -> None:
    producer = Producer(redis)
    for _ in range(3):  # the same summary three times (e.g. re-emitted by a retried step)
        await producer.publish(KEYS.events, "call.ended", ended("c1"))
    await producer.publish(KEYS.events, "call.ended", ended("c2"))

    async def done() -> bool:
        return await drained(redis) and len(rows(engine)) == 2

    await wait_for(done)
    assert [r.call_id for r in rows(engine)] == ["c1", "c2"]


async def test_crash_between_commit_and_ack_is_harmless(redis: aioredis.Redis, engine: Engine) -> None:
    producer = Producer(redis)
    await producer.publish(KEYS.events, "call.ended", ended("c1"))
    await producer.publish(KEYS.events, "agent.logged_in", {"ts": T0, "agent_id": "alice"})
    _, verdicts = await victim_commits_and_dies(redis, engine)
    assert {v.outcome for v in verdicts.values()} == {Outcome.ACK}
    assert len(rows(engine)) == 1 and await pending(redis) == 2

    rescuer_writer = await rescue(redis, engine)
    assert [r.call_id for r in rows(engine)] == ["c1"]
    assert rescuer_writer.duplicates == 1 and rescuer_writer.written == 0


async def test_poison_entries_are_dead_lettered_and_the_rest_written(redis: aioredis.Redis, service: None,
                                                                     engine: Engine) -> None:
    producer = Producer(redis)
    await redis.xadd(KEYS.events, {"type": "call.ended", "v": 1, "data": b"\xc1garbage"})
    await producer.publish(KEYS.events, "call.ended", ended("c1"))
    # decodable, but the database refuses it (CHECK constraint): only this row is dead
    await producer.publish(KEYS.events, "call.ended", ended("c-bad", outcome="teleported"))
    await producer.publish(KEYS.events, "call.ended", ended("c-neg", wait_ms=-5))
    await producer.publish(KEYS.events, "call.ended", ended("c-fax", media_type="fax"))
    await producer.publish(KEYS.events, "call.ended", ended("c2", media_type="chat"))

    async def settled() -> bool:
        return await drained(redis) and len(rows(engine)) == 2 and await redis.xlen(KEYS.dead) == 4

    await wait_for(settled)
    assert [(r.call_id, r.media_type) for r in rows(engine)] == [("c1", "audio"), ("c2", "chat")]
    dead = await dead_entries(redis)
    assert dead[0]["error"].startswith(b"undecodable")
    errors = {decode({k.removeprefix("orig_"): v for k, v in d.items() if k.startswith("orig_")}).data["call_id"]:
              d["error"].decode() for d in dead[1:]}
    assert errors["c-neg"] == "bad cdr: wait_ms=-5 is out of range"
    assert errors["c-fax"] == "bad cdr: media_type='fax' is neither audio nor chat"
    # the driver's own exception (IntegrityError, CheckViolation) naming the constraint
    assert errors["c-bad"].startswith("cdr refused by the database: ") and "ck_cdrs_outcome" in errors["c-bad"]


async def test_database_unavailable_leaves_cdrs_pending(redis: aioredis.Redis, tmp_path: Path) -> None:
    broken = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'cdr.sqlite3'}")
    writer = CdrWriter(broken)
    producer = Producer(redis)
    await producer.publish(KEYS.events, "call.ended", ended("c1"))
    await producer.publish(KEYS.events, "agent.logged_in", {"ts": T0, "agent_id": "alice"})
    raw: Any = await redis.xrange(KEYS.events)
    entries = [decode(f, i) for i, f in raw]
    verdicts = await writer(entries)
    assert [verdicts[e.id].outcome for e in entries] == [Outcome.BACKOFF, Outcome.ACK]
    broken.dispose()


async def test_service_survives_a_redis_restart(tmp_path: Path, sqlite_url: str, sqlite_engine: Engine) -> None:
    server = RedisServer().start()
    client = aioredis.Redis.from_url(server.url)
    settings = CdrWriterSettings(redis_url=server.url, tenant=TENANT, database_url=sqlite_url, consumer="w1",
                                 block_ms=50, claim_idle_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        await Producer(client).publish(KEYS.events, "call.ended", ended("before"))

        async def written(n: int) -> bool:
            return len(rows(sqlite_engine)) == n

        await wait_for(lambda: written(1))
        server.stop()  # no persistence: it comes back empty, without the consumer group
        await asyncio.sleep(0.3)
        server = RedisServer(port=server.port).start()
        await client.aclose()
        client = aioredis.Redis.from_url(server.url)
        await Producer(client).publish(KEYS.events, "call.ended", ended("after"))
        await wait_for(lambda: written(2))
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.aclose()
        server.stop()
    assert [r.call_id for r in rows(sqlite_engine)] == ["before", "after"]


async def test_service_process_stops_on_sigterm(redis: aioredis.Redis, redis_server: RedisServer,
                                                sqlite_url: str, sqlite_engine: Engine) -> None:
    await Producer(redis).publish(KEYS.events, "call.ended", ended("c1"))
    env = {**os.environ, "CC_REDIS_URL": redis_server.url, "CC_TENANT": TENANT, "CC_DATABASE_URL": sqlite_url,
           "CC_LOG_FORMAT": "json", "CC_BLOCK_MS": "50"}
    proc = await asyncio.create_subprocess_exec(console_script("cdr-writer"), env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    try:
        async def written() -> bool:
            return len(rows(sqlite_engine)) == 1 and await drained(redis)

        await wait_for(written)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()
    assert b"cdr_writer.stopped" in out


# -- strict databases: the same idempotency, and the type errors only they raise --------------------

async def test_idempotent_and_row_errors(redis: aioredis.Redis, engine: Engine) -> None:
    producer = Producer(redis)
    await producer.publish(KEYS.events, "call.ended", ended("pg-1"))
    await producer.publish(KEYS.events, "call.ended", ended("pg-1"))  # same batch, same call
    await producer.publish(KEYS.events, "call.ended", ended("pg-long", caller="x" * 300))  # varchar(255)
    await producer.publish(KEYS.events, "call.ended", ended("pg-2", agent_id=None))
    # the first writer commits and dies before the ack
    entries, verdicts = await victim_commits_and_dies(redis, engine)
    strict = engine.dialect.name != "sqlite"  # SQLite stores a string of any length
    long_verdict = Outcome.DEAD if strict else Outcome.ACK
    assert [verdicts[e.id].outcome for e in entries] == [Outcome.ACK, Outcome.ACK, long_verdict, Outcome.ACK]
    if strict:
        reason = verdicts[entries[2].id].reason
        assert "StringDataRightTruncation" in reason or "Data too long for column 'caller'" in reason, reason

    rescuer_writer = await rescue(redis, engine)
    with Session(engine) as session:
        counts = dict(session.execute(select(Cdr.call_id, func.count()).where(Cdr.call_id.like("pg-%"))
                                      .group_by(Cdr.call_id)).all())
    assert counts == ({"pg-1": 1, "pg-2": 1} if strict else {"pg-1": 1, "pg-2": 1, "pg-long": 1})
    row = rows(engine, "pg-2")[0]
    assert row.agent_id is None and row.received_at.isoformat() == "2025-03-01T12:00:00+00:00"
    # the long caller was dead-lettered again on redelivery by the rescuer (the DEAD verdict of the
    # victim was never applied: it died before acting on its verdicts)
    assert await redis.xlen(KEYS.dead) == (1 if strict else 0)
    assert rescuer_writer.duplicates == (3 if strict else 4) and rescuer_writer.written == 0
