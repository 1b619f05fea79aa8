"""Drives the Lua steps like a sip-edge would (tests/lua); reads back commands and events."""

from __future__ import annotations

from typing import Any

import msgpack
import redis.asyncio as aioredis

from callcenter.contract.codec import decode
from callcenter.store import RC, Store

T0 = 1_700_000_000_000
EDGE = "edge-1"
QUEUE_URI = "sip:queue@127.0.0.1:7000"


class Harness:
    """Drives the Lua steps like a sip-edge would, and reads back commands and events."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.store = Store(redis, "t")
        self.seq: dict[str, int] = {}
        self.now = T0

    @classmethod
    async def configured(cls, redis: aioredis.Redis, **config: int) -> Harness:
        """A harness whose tenant has these settings (`reject_on_no_agents=0`: a call with nobody
        logged in is queued, not rejected)."""
        harness = cls(redis)
        await redis.hset(harness.store.keys.config, mapping=config)
        return harness

    async def flow(self, flow_id: str = "support", skill: str = "sales", **fields: Any) -> None:
        base = {"skill": skill, "priority": 256, "welcome_uri": "", "queue_uri": QUEUE_URI}
        res = await self.store.flow_upsert(flow_id, {**base, **fields}, now=self.now)
        assert res.rc is RC.OK

    async def agent(self, agent_id: str, skills: list[str], login: bool = True, wrapup_s: int | None = None,
                    audio: bool = True, chat_capacity: int | None = None, chat: bool = False) -> None:
        """An agent with an audio URI (audio=True) and/or a chat URI (chat=True or a chat_capacity)."""
        chat_uri = f"sip:{agent_id}@127.0.0.1:7200" if chat or chat_capacity is not None else None
        uri = f"sip:{agent_id}@127.0.0.1:7100" if audio else None
        res = await self.store.agent_upsert(agent_id, uri, skills, wrapup_s, now=self.now, chat_uri=chat_uri,
                                            chat_capacity=chat_capacity)
        assert res.rc is RC.OK, res
        if login:
            res = await self.store.agent_login(agent_id, now=self.now)
            assert res.rc is RC.OK

    async def report(self, rtype: str, call_id: str, seq: int | None = None, **data: Any) -> Any:
        if seq is None:
            seq = self.seq.get(call_id, 0) + 1
        self.seq[call_id] = max(self.seq.get(call_id, 0), seq)
        payload = {"call_id": call_id, "edge": EDGE, "seq": seq, "ts": self.now, **data}
        return await self.store.apply_report(rtype, "0-1", msgpack.packb(payload), now=self.now)

    async def arrive(self, call_id: str, flow: str = "support", media_type: str | None = None,
                     on_media: bool = True) -> Any:
        """A new call. With `on_media`, a call queued because its caller is not on media yet gets
        the queue media's answer at once, as an edge reports it once the caller has ACKed (an agent
        is offered a call only then): the result is that answer's if it offered the call, else the
        arrival's."""
        extra = {"media_type": media_type} if media_type else {}
        res = await self.report("report.call_arrived", call_id, flow=flow, caller="alice",
                                caller_uri="sip:alice@127.0.0.1", sip_call_id=call_id + "@x", source="127.0.0.1:1",
                                **extra)
        if not on_media or res.rc is not RC.OK or res.detail != "queued":
            return res
        call = await self.store.call(call_id)
        if call is None or call.get("answered_ms") or call.get("media") != "queue":
            return res
        answered = await self.on_media(call_id)
        return answered if answered.detail == "offered" else res

    async def on_media(self, call_id: str, edge: str = EDGE) -> Any:
        """The queue media answered the call's caller and the caller ACKed (`report.media_answered`)."""
        answered = await self.report("report.media_answered", call_id, purpose="queue", uri=QUEUE_URI, edge=edge)
        assert answered.rc is RC.OK, answered
        return answered

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


def rings(cmds: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The data of the `command.ring` commands among `cmds`."""
    return [d for t, d in cmds if t == "command.ring"]
