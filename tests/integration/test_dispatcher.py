"""The dispatcher service against a real redis-server: reports in, commands and events out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from callcenter.contract.codec import decode
from callcenter.settings import DispatcherSettings
from callcenter.store import Store
from callcenter.store.keys import Keys
from callcenter_dev.processes import console_script
from callcenter_dev.producer import Producer
from callcenter_dev.servers import RedisServer
from callcenter_dispatcher.main import run

TENANT = "disp"
EDGE = "edge-a"


def report(rtype: str, call_id: str, seq: int, **data: Any) -> tuple[str, dict[str, Any]]:
    return rtype, {"call_id": call_id, "edge": EDGE, "seq": seq, "ts": 1, **data}


def arrival(call_id: str) -> tuple[str, dict[str, Any]]:
    return report("report.call_arrived", call_id, 1, flow="support", caller="bob", caller_uri="sip:bob@127.0.0.1",
                  sip_call_id=call_id, source="127.0.0.1:5")


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def command_types(redis: aioredis.Redis, keys: Keys) -> list[str]:
    return [decode(f, i).type for i, f in await redis.xrange(keys.commands(EDGE))]


@pytest.fixture
async def provisioned(redis: aioredis.Redis) -> Store:
    store = Store(redis, TENANT)
    await store.flow_upsert("support", {"skill": "s", "priority": 1, "queue_uri": "sip:q@127.0.0.1:9"})
    await store.agent_upsert("a1", "sip:a1@127.0.0.1:9", ["s"], None)
    return store


@pytest.fixture
async def dispatcher(redis_server: RedisServer, provisioned: Store) -> AsyncIterator[asyncio.Event]:
    settings = DispatcherSettings(redis_url=redis_server.url, tenant=TENANT, consumer="d1", block_ms=50,
                                  claim_idle_ms=200, timer_interval_ms=20)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    yield stop
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_reports_become_commands_in_order(redis: aioredis.Redis, provisioned: Store,
                                                dispatcher: asyncio.Event) -> None:
    keys = provisioned.keys
    await provisioned.agent_login("a1")
    producer = Producer(redis)
    for rtype, data in (arrival("c1"), report("report.media_answered", "c1", 2, purpose="queue", uri="sip:q@h"),
                        report("report.agent_answered", "c1", 3, offer_id="1", agent_id="a1"),
                        report("report.call_ended", "c1", 4, by="caller", reason="bye")):
        await producer.publish(keys.reports, rtype, data)

    async def ended() -> bool:
        return any(decode(f, i).type == "call.ended" for i, f in await redis.xrange(keys.events))
    await wait_for(ended)
    # the caller went to the queue media first; the agent rang once the caller was on it
    assert await command_types(redis, keys) == ["command.media", "command.ring"]
    agent = await provisioned.agent("a1")
    assert agent is not None and agent["state"] == "wrap_up"
    # everything is acknowledged: the last batch's acknowledgement rides with the next send, at
    # most a blocked read (block_ms, here 50 ms) after its effect
    async def all_acked() -> bool:
        return int((await redis.xpending(keys.reports, "dispatcher"))["pending"]) == 0
    await wait_for(all_acked, timeout=2)


async def test_undecodable_and_invalid_reports_go_to_dead_letters(redis: aioredis.Redis, provisioned: Store,
                                                                  dispatcher: asyncio.Event) -> None:
    keys = provisioned.keys
    await redis.xadd(keys.reports, {"type": "report.call_arrived", "v": "1", "data": b"\xc1garbage"})
    await redis.xadd(keys.reports, {"nothing": "here"})
    # decodes, but the Lua step refuses it: an arrival must be seq 1
    rtype, data = arrival("c9")
    data["seq"] = 4
    await Producer(redis).publish(keys.reports, rtype, data)
    await Producer(redis).publish(keys.reports, *arrival("c2"))  # and the next good one still flows

    async def three_dead() -> bool:
        return int(await redis.xlen(keys.dead)) >= 3
    await wait_for(three_dead)
    dead = await redis.xrange(keys.dead)
    errors = [f[b"error"].decode() for _, f in dead]
    assert "not msgpack" in errors[0] and "lacks type" in errors[1] and "invalid report" in errors[2]
    assert dead[0][1][b"orig_data"] == b"\xc1garbage"  # the original entry is kept whole

    async def c2_handled() -> bool:
        call = await provisioned.call("c2")
        return call is not None
    await wait_for(c2_handled)


async def test_timers_fire_in_the_service(redis: aioredis.Redis, provisioned: Store,
                                          dispatcher: asyncio.Event) -> None:
    await redis.hset(provisioned.keys.config, mapping={"wrapup_s": 0})
    await provisioned.agent_login("a1")
    await provisioned.redis.zadd(provisioned.keys.timers, {"wrapup|a1": 0})
    await redis.hset(provisioned.keys.agent("a1"), "state", "wrap_up")

    async def freed() -> bool:
        agent = await provisioned.agent("a1")
        return agent is not None and agent["state"] == "free"
    await wait_for(freed)


async def rescue(redis_server: RedisServer, redis: aioredis.Redis, keys: Keys, arrivals: int) -> None:
    """Run a fresh dispatcher until every arrival was applied exactly once and nothing is pending."""
    settings = DispatcherSettings(redis_url=redis_server.url, tenant=TENANT, consumer="rescuer", block_ms=50,
                                  claim_idle_ms=200, timer_interval_ms=20, reject_on_no_agents=False)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        async def all_applied() -> bool:
            pending = await redis.xpending(keys.reports, "dispatcher")
            return pending["pending"] == 0 and int(await redis.scard(keys.calls)) == arrivals
        try:
            await wait_for(all_applied, timeout=20)
        except AssertionError:
            pending = await redis.xpending(keys.reports, "dispatcher")
            raise AssertionError(f"pending={pending} calls={await redis.scard(keys.calls)} "
                                 f"dead={await redis.xrange(keys.dead)}") from None
        types = [decode(f, i).type for i, f in await redis.xrange(keys.events)]
        assert types.count("call.arrived") == arrivals
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_entries_of_a_dead_consumer_are_reclaimed(redis_server: RedisServer, redis: aioredis.Redis,
                                                        provisioned: Store) -> None:
    keys = provisioned.keys
    await provisioned.agent_login("a1")
    await redis.xgroup_create(keys.reports, "dispatcher", id="0", mkstream=True)
    for i in range(5):
        await Producer(redis).publish(keys.reports, *arrival(f"g{i}"))
    # a consumer reads them and dies before acknowledging anything
    got = await redis.xreadgroup("dispatcher", "ghost", {keys.reports: ">"}, count=10)
    assert len(got[0][1]) == 5
    await rescue(redis_server, redis, keys, arrivals=5)


async def test_sigkilled_dispatcher_loses_nothing(redis_server: RedisServer, redis: aioredis.Redis,
                                                  provisioned: Store) -> None:
    """SIGKILL a dispatcher process mid-stream: another one applies every report exactly once."""
    keys = provisioned.keys
    producer = Producer(redis)
    for i in range(300):
        await producer.publish(keys.reports, *arrival(f"k{i}"))
    env = {**os.environ, "CC_REDIS_URL": redis_server.url, "CC_TENANT": TENANT, "CC_CONSUMER": "victim",
           "CC_LOG_FORMAT": "json", "CC_BATCH": "20", "CC_REJECT_ON_NO_AGENTS": "false"}
    victim = subprocess.Popen([console_script("dispatcher")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        async def started() -> bool:
            return int(await redis.scard(keys.calls)) > 0
        await wait_for(started)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
    await rescue(redis_server, redis, keys, arrivals=300)


async def test_sigterm_drains_and_exits_zero(redis_server: RedisServer) -> None:
    env = {**os.environ, "CC_REDIS_URL": redis_server.url, "CC_TENANT": TENANT, "CC_LOG_FORMAT": "json",
           "CC_CONSUMER": "term-test"}
    proc = subprocess.Popen([console_script("dispatcher")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        async def reading() -> bool:  # it reads only after its signal handlers are in place
            try:
                consumers = await client.xinfo_consumers(Keys(TENANT).reports, "dispatcher")
            except aioredis.ResponseError:
                return False
            return any(c["name"] in (b"term-test", "term-test") for c in consumers)
        await wait_for(reading)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        assert b"dispatcher.stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        await client.aclose()


async def test_dispatcher_waits_for_redis_to_come_up(tmp_path: object) -> None:
    """Started before its Redis (a pod scheduled first), it waits, then works."""
    server = RedisServer()
    from callcenter_dev.servers import free_port
    server.port = free_port()
    settings = DispatcherSettings(redis_url=server.url, tenant=TENANT, consumer="early", block_ms=50, wrapup_s=7)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    await asyncio.sleep(0.5)
    assert not task.done()
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        async def configured() -> bool:
            return bool(await client.hget(Keys(TENANT).config, "wrapup_s"))
        await wait_for(configured)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.aclose()
        server.stop()


def test_every_service_defaults_to_loopback_with_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from callcenter.settings import ApiSettings, CdrWriterSettings, EdgeSettings
    for name in list(os.environ):
        if name.startswith("CC_"):
            monkeypatch.delenv(name)
    for cls in (DispatcherSettings, EdgeSettings, CdrWriterSettings, ApiSettings):
        s = cls()
        assert s.redis_url == "redis://127.0.0.1:6379/0" and s.tenant == "default"
    assert EdgeSettings().sip_host == "127.0.0.1" and ApiSettings().api_host == "127.0.0.1"
    assert CdrWriterSettings().database_url.startswith("sqlite:///")


async def test_reconciler_runs_in_the_service(redis_server: RedisServer, redis: aioredis.Redis,
                                              provisioned: Store) -> None:
    await provisioned.agent_login("a1")
    await redis.hset(provisioned.keys.agent("a1"), mapping={"state": "ringing", "call": "vanished"})
    settings = DispatcherSettings(redis_url=redis_server.url, tenant=TENANT, consumer="rec", block_ms=50,
                                  reconcile_interval_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        async def freed() -> bool:
            agent = await provisioned.agent("a1")
            return agent is not None and agent["state"] == "free"
        await wait_for(freed)
        types = [decode(f, i).type for i, f in await redis.xrange(provisioned.keys.events)]
        assert "agent.released" in types
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_wrapup_end_survives_a_redis_and_dispatcher_restart() -> None:
    """The wrap-up end is a timer in Redis (AOF): after both restart, it still frees the agent."""
    server = RedisServer(appendonly=True).start()
    client = aioredis.Redis.from_url(server.url)
    store = Store(client, TENANT)
    await store.flow_upsert("support", {"skill": "s", "priority": 1, "queue_uri": "sip:q@127.0.0.1:9"})
    await store.agent_upsert("a1", "sip:a1@127.0.0.1:9", ["s"], 2)
    await store.agent_login("a1")
    producer = Producer(client)
    for rtype, data in (arrival("w1"), report("report.agent_answered", "w1", 2, offer_id="1", agent_id="a1"),
                        report("report.call_ended", "w1", 3, by="caller", reason="bye")):
        await producer.publish(store.keys.reports, rtype, data)
    settings = DispatcherSettings(redis_url=server.url, tenant=TENANT, consumer="d", block_ms=50,
                                  timer_interval_ms=20)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))

    async def in_wrapup() -> bool:
        agent = await store.agent("a1")
        return agent is not None and agent["state"] == "wrap_up"
    await wait_for(in_wrapup)
    stop.set()
    await asyncio.wait_for(task, 10)
    await client.aclose()
    assert server.proc is not None
    server.proc.terminate()  # Redis restarts from its append-only file
    server.proc.wait(5)
    server = RedisServer(port=server.port, appendonly=True, workdir=server.workdir).start()
    client = aioredis.Redis.from_url(server.url)
    store = Store(client, TENANT)
    try:
        agent = await store.agent("a1")
        assert agent is not None and agent["state"] == "wrap_up"
        stop = asyncio.Event()
        task = asyncio.create_task(run(settings, stop))

        async def free() -> bool:
            agent = await store.agent("a1")
            return agent is not None and agent["state"] == "free"
        await wait_for(free)
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await client.aclose()
        server.stop()


async def test_acknowledged_reports_are_trimmed_and_nothing_else(redis: aioredis.Redis, provisioned: Store) -> None:
    from callcenter_dispatcher.timers import trim_acknowledged
    keys = provisioned.keys
    assert await trim_acknowledged(provisioned, "dispatcher") == 0  # no stream yet
    await redis.xgroup_create(keys.reports, "dispatcher", id="0", mkstream=True)
    ids = [await Producer(redis).publish(keys.reports, *arrival(f"t{i}")) for i in range(5)]
    await redis.xreadgroup("dispatcher", "d1", {keys.reports: ">"}, count=3)  # 0, 1, 2 delivered
    await redis.xack(keys.reports, "dispatcher", ids[0], ids[2])               # 1 still pending
    written = int(ids[0].split("-")[0])
    last = int(ids[-1].split("-")[0])  # the clock is explicit: the whole test may run in one millisecond
    assert await trim_acknowledged(provisioned, "dispatcher", keep_ms=60_000, now=written + 59_999) == 0
    assert await trim_acknowledged(provisioned, "dispatcher", keep_ms=60_000, now=last + 60_001) == 1
    assert [i.decode() for i, _ in await redis.xrange(keys.reports)] == ids[1:]
    await redis.xack(keys.reports, "dispatcher", ids[1])
    assert await trim_acknowledged(provisioned, "dispatcher", now=last + 1) == 1  # up to the last delivered one
    assert [i.decode() for i, _ in await redis.xrange(keys.reports)] == ids[2:]
