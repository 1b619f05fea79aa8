"""Horizontal safety: several dispatcher processes in one consumer group, two simulated sip-edges,
hundreds of calls, tens of agents logging in and out, one dispatcher SIGKILLed mid-run.

The events stream is the serialization order of the Lua steps, so each agent's and each call's
timeline is rebuilt from it in stream order and checked: an agent is never offered an audio call
while it rings, talks or holds chats, never holds more chats than its capacity, a chat-only agent
never gets audio and an audio-only one never a chat, a call is never offered to two agents at
once, every call ends exactly once, the counters agree with the events, and nothing is left behind
(agents, queues, pending entries).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter, defaultdict
from typing import Any

import redis.asyncio as aioredis

from callcenter.contract.codec import Entry, decode
from callcenter.store import RC, Store
from callcenter.store.keys import tenant_totals
from callcenter_dev.edge_sim import EdgeSim, SimProfile
from callcenter_dev.processes import ServiceProcess
from callcenter_dev.servers import RedisServer

TENANT = "conc"
EDGES = ("edge-sim-a", "edge-sim-b")
CALLS_PER_EDGE = 200
RATE_PER_EDGE = 20.0          # arrivals per second per edge: 400 calls in ~10 s
DISPATCHERS = 3
SEED = int(os.environ.get("CC_CONCURRENCY_SEED", "20240611"))  # vary it to explore other runs

FLOWS: dict[str, dict[str, Any]] = {
    "sales": {"skill": "s1", "priority": 0, "welcome_uri": "sip:welcome@127.0.0.1:7001"},
    "vip": {"skill": "s1", "priority": 0, "strategy": "random"},
    "support": {"skill": "s2", "priority": 1, "strategy": "round-robin"},
    "billing": {"skill": "s3", "priority": 2, "strategy": "fewest-calls",
                "welcome_uri": "sip:welcome@127.0.0.1:7001"},
    "tech": {"skill": "s3", "priority": 1, "strategy": "least-talk-time"},
}
SKILL_SETS = (["s1"], ["s2"], ["s3"], ["s1", "s2"], ["s2", "s3"], ["s1", "s3"])
AGENTS = [f"ag{i:02d}" for i in range(30)]
CHURNING = AGENTS[:6]  # these log out and in again during the run, through the api's Lua steps
# what each agent takes: audio calls, chats (CHAT_CAPACITY at once) or both
CAPS = {a: ("chat" if i % 5 == 4 else "both" if i % 3 == 1 else "audio") for i, a in enumerate(AGENTS)}
CHAT_CAPACITY = 3
P_CHAT = 0.3


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def kill_holding_entries(redis: aioredis.Redis, stream: str, victim: ServiceProcess, name: str) -> int:
    """SIGKILL a dispatcher while it holds entries it read and has not acknowledged (a death
    mid-batch): freeze it, look at its pending count, let it run a little more if it holds none."""
    assert victim.proc is not None and victim.proc.poll() is None, victim.log()
    pending = 0
    for _ in range(200):
        victim.proc.send_signal(signal.SIGSTOP)
        consumers = await redis.xinfo_consumers(stream, "dispatcher")
        pending = next(int(c["pending"]) for c in consumers if c["name"] in (name, name.encode()))
        if pending:
            break
        victim.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.003)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(5)
    return pending


async def read_stream(redis: aioredis.Redis, key: str) -> list[Entry]:
    out: list[Entry] = []
    last = "-"
    while True:
        chunk = await redis.xrange(key, min=last, count=5000)
        if last != "-":
            chunk = chunk[1:]
        if not chunk:
            return out
        out += [decode(fields, eid) for eid, fields in chunk]
        last = out[-1].id


async def provision(store: Store) -> None:
    for flow_id, fields in FLOWS.items():
        base = {"queue_uri": "sip:queue@127.0.0.1:7000", "welcome_uri": ""}
        assert (await store.flow_upsert(flow_id, {**base, **fields})).rc is RC.OK
    rng = random.Random(SEED)
    for i, agent_id in enumerate(AGENTS):
        wrapup = 1 if i % 3 == 0 else None  # a third wrap up for 1 s, the rest use CC_WRAPUP_S=0
        uri = f"sip:{agent_id}@127.0.0.1:7100" if CAPS[agent_id] != "chat" else None
        chat_uri = f"sip:{agent_id}@127.0.0.1:7200" if CAPS[agent_id] != "audio" else None
        res = await store.agent_upsert(agent_id, uri, rng.choice(SKILL_SETS), wrapup, chat_uri=chat_uri,
                                       chat_capacity=CHAT_CAPACITY)
        assert res.rc is RC.OK
        assert (await store.agent_login(agent_id)).rc is RC.OK


async def churn(store: Store, stop: asyncio.Event) -> Counter[str]:
    """Log the churning agents out and in again at random (bounded by `stop`)."""
    rng = random.Random(SEED + 1)
    done: Counter[str] = Counter()
    while not stop.is_set():
        agent_id = rng.choice(CHURNING)
        agent = await store.agent(agent_id)
        assert agent is not None
        if agent["state"] == "logged_out":
            res = await store.agent_login(agent_id)
            done["login"] += res.rc is RC.OK
        elif agent.get("logout_pending") == "1":
            res = await store.agent_login(agent_id)  # cancels the pending logout
            done["relogin"] += res.rc is RC.OK
        else:
            res = await store.agent_logout(agent_id)
            done[f"logout_{res.detail}"] += 1
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(0.05, 0.3))
        except TimeoutError:
            pass
    for agent_id in CHURNING:  # everyone back for the end of the run
        await store.agent_login(agent_id)
    return done


def check_timelines(events: list[Entry]) -> dict[str, Any]:
    """Replay the events in stream order; return what was seen, fail on the first violation."""
    agent_state: dict[str, str] = defaultdict(lambda: "logged_out")
    agent_call: dict[str, str | None] = defaultdict(lambda: None)
    just_rang: dict[str, str | None] = {}       # agent -> call of its last free -> ringing step
    offer_of: dict[str, tuple[str, str] | None] = {}  # call -> (agent, offer id) of its live offer
    talking_to: dict[str, str] = {}
    arrived: set[str] = set()
    chats: set[str] = set()                       # calls that are chats
    chats_of: dict[str, set[str]] = defaultdict(set)  # agent -> chats it holds (offered or connected)
    ended: Counter[str] = Counter()
    seen: dict[str, Any] = {"outcomes": Counter(), "connected_by_agent": Counter(),
                            "offered_by_agent": Counter(), "types": Counter(), "chat_offers": 0, "max_chats": 0}

    def where(e: Entry) -> str:
        return f"event {e.id} {e.type} {e.data}"

    for e in events:
        d = e.data
        seen["types"][e.type] += 1
        if e.type == "agent.state_changed":
            a = d["agent_id"]
            assert d["from"] == agent_state[a], f"{where(e)}: agent was {agent_state[a]}"
            if d["to"] == "ringing":
                assert d["from"] == "free" and agent_call[a] is None, f"{where(e)}: offered while busy"
                assert not chats_of[a], f"{where(e)}: an audio call for an agent in chats"
                just_rang[a] = d["call_id"]
            elif d["to"] == "in_chat":
                assert d["from"] == "free" and agent_call[a] is None, f"{where(e)}: a chat for a busy agent"
            elif agent_state[a] == "in_chat":
                assert not chats_of[a], f"{where(e)}: left in_chat holding {chats_of[a]}"
            elif d["to"] == "in_call":
                assert d["from"] == "ringing" and d["call_id"] == agent_call[a], f"{where(e)}: not its ring"
            agent_state[a] = d["to"]
            agent_call[a] = d.get("call_id") if d["to"] in ("ringing", "in_call") else None
        elif e.type == "call.arrived":
            assert d["call_id"] not in arrived, where(e)
            arrived.add(d["call_id"])
            if d.get("media_type") == "chat":
                chats.add(d["call_id"])
        elif e.type == "call.offered":
            c, a = d["call_id"], d["agent_id"]
            assert c in arrived and ended[c] == 0, f"{where(e)}: offered a call that is not live"
            assert offer_of.get(c) is None, f"{where(e)}: already offered to {offer_of[c]}"
            assert talking_to.get(c) is None, f"{where(e)}: already talking"
            if c in chats:
                assert CAPS[a] != "audio", f"{where(e)}: a chat for an audio-only agent"
                assert agent_state[a] == "in_chat", f"{where(e)}: a chat for an agent in {agent_state[a]}"
                chats_of[a].add(c)
                assert len(chats_of[a]) <= CHAT_CAPACITY, f"{where(e)}: over capacity {chats_of[a]}"
                seen["chat_offers"] += 1
                seen["max_chats"] = max(seen["max_chats"], len(chats_of[a]))
            else:
                assert CAPS[a] != "chat", f"{where(e)}: audio for a chat-only agent"
                assert just_rang.pop(a, None) == c, f"{where(e)}: the agent did not go free -> ringing for it"
                assert agent_state[a] == "ringing" and agent_call[a] == c, where(e)
            offer_of[c] = (a, d["offer_id"])
            seen["offered_by_agent"][a] += 1
        elif e.type == "call.agent_failed":
            c = d["call_id"]
            assert offer_of.get(c) == (d["agent_id"], d["offer_id"]), f"{where(e)}: not the live offer"
            offer_of[c] = None
            chats_of[d["agent_id"]].discard(c)
        elif e.type == "call.connected":
            c, a = d["call_id"], d["agent_id"]
            assert offer_of.get(c) is not None and offer_of[c][0] == a, f"{where(e)}: not offered to it"  # type: ignore[index]
            if c in chats:
                assert agent_state[a] == "in_chat" and c in chats_of[a], where(e)
            else:
                assert agent_state[a] == "in_call" and agent_call[a] == c, where(e)
            offer_of[c] = None
            talking_to[c] = a
            seen["connected_by_agent"][a] += 1
        elif e.type == "call.ended":
            c = d["call_id"]
            assert c in arrived and ended[c] == 0, f"{where(e)}: ended twice or never arrived"
            ended[c] += 1
            seen["outcomes"][d["outcome"]] += 1
            if d["outcome"] == "answered":
                assert talking_to.get(c) == d.get("agent_id"), where(e)
            else:
                assert c not in talking_to, f"{where(e)}: a connected call must end answered"
            offer_of[c] = None
            talking_to.pop(c, None)
            if d.get("agent_id"):
                chats_of[d["agent_id"]].discard(c)
            assert d.get("media_type", "audio") == ("chat" if c in chats else "audio"), where(e)
        elif e.type == "agent.logged_out":
            assert agent_state[d["agent_id"]] == "logged_out", where(e)
    # an agent that rang for a call always saw call.offered for it in the same step
    assert not [a for a, c in just_rang.items() if c is not None], just_rang
    assert ended.keys() == arrived, f"calls never ended: {sorted(arrived - set(ended))[:10]}"
    seen["arrived"] = arrived
    seen["agent_state"] = dict(agent_state)
    return seen


def check_commands(per_edge: dict[str, list[Entry]], events: list[Entry]) -> Counter[str]:
    """Each ring matches one call.offered; nothing is sent for a call after its reject/hangup."""
    offered = {(e.data["call_id"], e.data["offer_id"], e.data["agent_id"]) for e in events if e.type == "call.offered"}
    rings: set[tuple[str, str, str]] = set()
    types: Counter[str] = Counter()
    for edge, commands in per_edge.items():
        closed: set[str] = set()
        for c in commands:
            types[c.type] += 1
            call_id = c.data["call_id"]
            assert call_id.startswith(edge), f"{edge} got a command for {call_id}"
            assert call_id not in closed, f"{edge}: {c.type} {c.data} after the call was torn down"
            if c.type in ("command.reject", "command.hangup"):
                closed.add(call_id)
            if c.type == "command.ring":
                key = (call_id, c.data["offer_id"], c.data["agent_id"])
                assert key not in rings, f"ring sent twice: {key}"
                rings.add(key)
    assert rings == offered, f"rings without offers {list(rings - offered)[:5]}, offers without ring " \
                             f"{list(offered - rings)[:5]}"
    return types


async def test_many_dispatchers_two_edges_sigkill(redis_server: RedisServer, redis: aioredis.Redis) -> None:
    started = time.monotonic()
    store = Store(redis, TENANT)
    keys = store.keys
    await provision(store)
    env = {"CC_REDIS_URL": redis_server.url, "CC_TENANT": TENANT, "CC_WRAPUP_S": "0", "CC_RING_TIMEOUT_S": "1",
           "CC_OFFER_LEASE_GRACE_S": "5", "CC_CLAIM_IDLE_MS": "1000", "CC_BLOCK_MS": "100", "CC_BATCH": "32",
           "CC_TIMER_INTERVAL_MS": "20", "CC_LOG_LEVEL": "warning"}
    dispatchers = [ServiceProcess("dispatcher", {**env, "CC_CONSUMER": f"d{i}"}).start() for i in range(DISPATCHERS)]
    sims = [EdgeSim(redis, TENANT, edge, seed=SEED + i, profile=SimProfile(p_unknown_flow=0.01, p_chat=P_CHAT)).start()
            for i, edge in enumerate(EDGES)]
    stop_churn = asyncio.Event()
    try:
        async def all_reading() -> bool:
            try:
                consumers = await redis.xinfo_consumers(keys.reports, "dispatcher")
            except aioredis.ResponseError:
                return False
            return len(consumers) == DISPATCHERS
        await until(all_reading, 15, "every dispatcher reads the reports stream")

        churner = asyncio.create_task(churn(store, stop_churn))
        load = asyncio.gather(*(sim.place_calls(CALLS_PER_EDGE, RATE_PER_EDGE, list(FLOWS)) for sim in sims))

        # in the thick of it, one dispatcher dies without a word
        await asyncio.sleep(CALLS_PER_EDGE / RATE_PER_EDGE / 2)
        victim = dispatchers[1]
        victim_pending = await kill_holding_entries(redis, keys.reports, victim, "d1")

        await asyncio.wait_for(load, timeout=30)
        stop_churn.set()
        churned = await asyncio.wait_for(churner, timeout=5)

        async def settled() -> bool:
            if not all([await sim.idle() for sim in sims]):
                return False
            pending = await redis.xpending(keys.reports, "dispatcher")
            return pending["pending"] == 0 and int(await redis.scard(keys.calls)) == 0

        async def agents_at_rest() -> bool:
            states = {(await store.agent(a) or {}).get("state") for a in AGENTS}
            return states <= {"free", "logged_out"}

        try:
            await until(settled, 25, "every call ended on the edges and in Redis, nothing pending")
            # chat wrap-ups add up (one per chat that ended): the last one may end well after the run
            ends = [int((await store.agent(a) or {}).get("wrapup_end_ms") or 0) for a in AGENTS]
            rest_s = max(0.0, (max(ends) - time.time() * 1000) / 1000)
            await until(agents_at_rest, 5 + rest_s, "every agent free or logged out")
        except AssertionError:
            live = [c for sim in sims for c in sim.calls.values() if not c.ended]
            pending = await redis.xpending(keys.reports, "dispatcher")
            raise AssertionError(f"live on edges: {live[:5]}; pending {pending}; "
                                 f"calls {await redis.smembers(keys.calls)}; dead {await redis.xlen(keys.dead)}; "
                                 f"{[d.log()[-2000:] for d in dispatchers]}") from None
        assert victim_pending > 0, "the victim never held an unacknowledged entry"
        for d in dispatchers:
            if d is not victim:
                assert d.proc is not None and d.proc.poll() is None, f"a dispatcher died:\n{d.log()}"

        # -- the events, in the order the Lua steps ran ------------------------------------------
        events = await read_stream(redis, keys.events)
        seen = check_timelines(events)
        arrivals = CALLS_PER_EDGE * len(EDGES)
        assert len(seen["arrived"]) == arrivals
        assert sum(seen["outcomes"].values()) == arrivals
        assert seen["outcomes"]["answered"] == seen["types"]["call.connected"]
        assert seen["outcomes"]["abandoned"] == seen["types"]["call.abandoned"]
        assert seen["outcomes"]["rejected"] == seen["types"]["call.rejected"]
        # the calls must really have exercised the paths
        assert seen["outcomes"]["answered"] > 50 and seen["outcomes"]["abandoned"] > 10, seen["outcomes"]
        assert seen["types"]["call.agent_failed"] > 10 and seen["types"]["call.queued"] > 10, seen["types"]
        assert seen["chat_offers"] > 30 and seen["max_chats"] >= 2, seen

        # -- the commands each edge received agree with the events ------------------------------
        commands = {edge: await read_stream(redis, keys.commands(edge)) for edge in EDGES}
        check_commands(commands, events)
        for sim in sims:
            assert sim.reports["report.call_ended"] == CALLS_PER_EDGE == sim.reports["report.call_arrived"]

        # -- counters ------------------------------------------------------------------------------
        # the tenant's counters: the sum of its flows' (store.keys.tenant_totals)
        flows = {m.decode() for m in await redis.sunion([keys.statflows, keys.flows])}
        stats = {k: int(v) for k, v in tenant_totals(
            [{k.decode(): v.decode() for k, v in (await redis.hgetall(keys.flow_stats(f))).items()} for f in flows]
        ).items()}
        assert stats.get("answered", 0) == seen["types"]["call.connected"]
        assert stats.get("distributed", 0) == seen["types"]["call.offered"]
        assert stats.get("abandoned", 0) == seen["outcomes"]["abandoned"]
        assert stats.get("incalls", 0) == arrivals - seen["outcomes"]["rejected"]
        assert stats.get("onhold", 0) == 0 and stats.get("onhold_chats", 0) == 0
        assert 0 < stats.get("answered_chats", 0) < stats.get("answered", 0)
        for agent_id in AGENTS:
            agent = await store.agent(agent_id)
            assert agent is not None
            answered = int(agent.get("answered", 0)) + int(agent.get("answered_chats", 0))
            assert answered == seen["connected_by_agent"][agent_id], agent_id
            assert int(agent.get("chats") or 0) == 0 and await redis.scard(keys.agent_chats(agent_id)) == 0
            assert int(agent.get("distributed", 0)) == seen["offered_by_agent"][agent_id], agent_id
            assert agent["state"] == seen["agent_state"][agent_id], agent_id
            assert agent["state"] in ("free", "logged_out") and agent.get("call", "") == ""

        # -- nothing left behind -------------------------------------------------------------------
        skills = {f["skill"] for f in FLOWS.values()}
        for skill in skills:
            free = {m.decode() for m in await redis.zrange(keys.skill_free(skill), 0, -1)}
            logged = {m.decode() for m in await redis.smembers(keys.skill_logged(skill))}
            want_free, want_logged = set(), set()
            for agent_id in AGENTS:
                agent = await store.agent(agent_id) or {}
                if skill in agent["skills"].split(","):
                    if agent["state"] == "free" and agent["uri"]:
                        want_free.add(agent_id)
                    if agent["state"] != "logged_out":
                        want_logged.add(agent_id)
            assert free == want_free and logged == want_logged, skill
            open_for_chats = {m.decode() for m in await redis.zrange(keys.skill_chat(skill), 0, -1)}
            assert open_for_chats <= want_logged and not {a for a in open_for_chats if CAPS[a] == "audio"}, skill
        for flow_id in FLOWS:
            assert await redis.zcard(keys.queue(flow_id)) == 0, flow_id
            assert await redis.zcard(keys.chat_queue(flow_id)) == 0, flow_id
        for edge in EDGES:
            assert await redis.scard(keys.edge_calls(edge)) == 0, edge
        timers = [t.decode() for t in await redis.zrange(keys.timers, 0, -1)]
        assert not [t for t in timers if not t.startswith("wrapup|")], timers
        assert await redis.xlen(keys.dead) == 0, await redis.xrange(keys.dead, count=3)
        assert (await redis.xpending(keys.reports, "dispatcher"))["pending"] == 0
        print(f"\nmany-dispatchers: {seen['outcomes']} offers={seen['types']['call.offered']} "
              f"agent_failed={seen['types']['call.agent_failed']} churn={dict(churned)} "
              f"victim_pending_at_kill={victim_pending} ignored={[dict(s.ignored) for s in sims]} "
              f"wrap-up left after the run={rest_s:.1f} s chat offers={seen['chat_offers']} "
              f"in {time.monotonic() - started:.1f} s")
    finally:
        stop_churn.set()
        for sim in sims:
            await sim.stop()
        for d in dispatchers:
            d.stop()
