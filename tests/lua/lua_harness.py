"""Drives the Lua steps like a sip-edge would (tests/lua); reads back commands and events."""

from __future__ import annotations

from typing import Any

import msgpack
import redis.asyncio as aioredis

from callcenter.events import decode
from callcenter.store import RC, Store

T0 = 1_700_000_000_000
EDGE = "edge-1"


class Harness:
    """Drives the Lua steps like a sip-edge would, and reads back commands and events."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.store = Store(redis, "t")
        self.seq: dict[str, int] = {}
        self.now = T0

    async def flow(self, flow_id: str = "support", skill: str = "sales", **fields: Any) -> None:
        base = {"skill": skill, "priority": 256, "welcome_uri": "", "queue_uri": "sip:queue@127.0.0.1:7000"}
        res = await self.store.flow_upsert(flow_id, {**base, **fields}, now=self.now)
        assert res.rc is RC.OK

    async def agent(self, agent_id: str, skills: list[str], login: bool = True, wrapup_s: int | None = None) -> None:
        await self.store.agent_upsert(agent_id, f"sip:{agent_id}@127.0.0.1:7100", skills, wrapup_s, now=self.now)
        if login:
            res = await self.store.agent_login(agent_id, now=self.now)
            assert res.rc is RC.OK

    async def report(self, rtype: str, call_id: str, seq: int | None = None, **data: Any) -> Any:
        if seq is None:
            seq = self.seq.get(call_id, 0) + 1
        self.seq[call_id] = max(self.seq.get(call_id, 0), seq)
        payload = {"call_id": call_id, "edge": EDGE, "seq": seq, "ts": self.now, **data}
        return await self.store.apply_report(rtype, "0-1", msgpack.packb(payload), now=self.now)

    async def arrive(self, call_id: str, flow: str = "support") -> Any:
        return await self.report("report.call_arrived", call_id, flow=flow, caller="alice",
                                 caller_uri="sip:alice@127.0.0.1", sip_call_id=call_id + "@x", source="127.0.0.1:1")

    async def commands(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for eid, fields in await self.redis.xrange(self.store.keys.commands(EDGE)):
            e = decode(fields, eid)
            out.append((e.type, e.data))
        return out

    async def events(self, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        out = []
        for eid, fields in await self.redis.xrange(self.store.keys.events):
            e = decode(fields, eid)  # every event the Lua writes must follow the contract
            if e.type.startswith(prefix):
                out.append((e.type, e.data))
        return out

    async def state(self, agent_id: str) -> str:
        agent = await self.store.agent(agent_id)
        assert agent is not None
        return agent["state"]
