"""A simulated sip-edge at the level of reports and commands (no SIP), for load and concurrency tests.

It behaves towards the dispatchers like `callcenter_sip_edge`: it reads its command stream
`cc:{t}:commands:<edge>` and answers with reports on `cc:{t}:reports`, numbered per call with `seq`
and published in the order the facts happened. What the callers, agents and media servers do is
decided by a seeded RNG:

- arrivals at a bounded rate, spread over the given flows;
- welcome media: answered, then ended after a short message; queue media: answered, plays forever;
- a ring: the agent answers, rejects (486 busy) or does not answer within the ring timeout;
- a talk lasts a random time, then the caller or the agent hangs up;
- a caller that is not talking hangs up when its patience runs out (in welcome, queued or ringing);
- `command.reject` / `command.hangup` end the call (`by = edge`), `command.cancel_ring` stops a
  ring that is still ringing (`agent_failed`, reason `cancelled`).

Like the real edge it ignores a ring while it already has an agent leg, and a cancel for an offer
that is not ringing any more. Several simulators (different edge ids) may share one Redis.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from callcenter.contract.codec import decode, encode
from callcenter.store.keys import Keys


@dataclass(frozen=True)
class SimProfile:
    """Probabilities and durations (seconds) of the simulated behaviour."""

    p_answer: float = 0.7          # a ring is answered ...
    p_reject: float = 0.15         # ... or rejected with 486; otherwise not answered (ring timeout)
    answer_s: tuple[float, float] = (0.05, 0.6)
    reject_s: tuple[float, float] = (0.02, 0.3)
    welcome_s: tuple[float, float] = (0.05, 0.3)
    media_setup_s: tuple[float, float] = (0.001, 0.02)
    talk_s: tuple[float, float] = (0.1, 1.2)
    patience_s: tuple[float, float] = (0.3, 8.0)
    p_caller_ends_talk: float = 0.5
    p_unknown_flow: float = 0.0    # arrivals for a flow nobody provisioned (404)
    p_chat: float = 0.0            # arrivals that are chats (an MSRP offer) rather than audio calls


@dataclass
class _Leg:
    offer_id: str
    agent_id: str
    phase: str  # ringing | connected


@dataclass
class _Call:
    call_id: str
    seq: int = 0
    media: str | None = None
    agent: _Leg | None = None
    ended: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class EdgeSim:
    """A simulated sip-edge: publishes reports and answers its commands the way a real edge would, without SIP."""

    def __init__(self, redis: aioredis.Redis, tenant: str, edge_id: str, seed: int,
                 profile: SimProfile | None = None) -> None:
        self.redis = redis
        self.keys = Keys(tenant)
        self.edge_id = edge_id
        self.rng = random.Random(seed)
        self.profile = profile or SimProfile()
        self.calls: dict[str, _Call] = {}
        self.reports: Counter[str] = Counter()   # report types sent
        self.ignored: Counter[str] = Counter()   # commands the edge ignored, by type
        self._outbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_command = "0-0"
        self._next = 0
        self._unpublished = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> EdgeSim:
        self._tasks = [asyncio.create_task(self._publish()), asyncio.create_task(self._read_commands()),
                       asyncio.create_task(self._heartbeat())]
        return self

    async def _heartbeat(self, interval_s: float = 0.5) -> None:
        """Beat in `cc:{t}:edges` like the real edge: the dispatchers end the calls of an edge without one."""
        while True:
            await self.redis.zadd(self.keys.edges, {self.edge_id: int(time.time() * 1000)})
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        for call in self.calls.values():
            for t in call.timers:
                t.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def live_calls(self) -> int:
        return sum(1 for c in self.calls.values() if not c.ended)

    async def idle(self) -> bool:
        """Every call has ended here and every report has been published."""
        return self.live_calls() == 0 and self._unpublished == 0

    async def place_calls(self, count: int, rate_per_s: float, flows: Sequence[str]) -> None:
        """Make `count` arrivals at `rate_per_s`, spread at random over `flows` (bounded in time)."""
        for _ in range(count):
            flow = self.rng.choice(list(flows))
            if self.rng.random() < self.profile.p_unknown_flow:
                flow = "no-such-flow"
            self.arrive(flow, "chat" if self.rng.random() < self.profile.p_chat else "audio")
            await asyncio.sleep(1.0 / rate_per_s)

    # -- callers -----------------------------------------------------------------------------------
    def arrive(self, flow: str, media_type: str = "audio") -> str:
        self._next += 1
        call = _Call(call_id=f"{self.edge_id}-c{self._next}")
        self.calls[call.call_id] = call
        self._report(call, "report.call_arrived", flow=flow, caller=f"caller{self._next}",
                     caller_uri=f"sip:caller{self._next}@127.0.0.1", sip_call_id=f"{call.call_id}@sim",
                     source="127.0.0.1:5060", media_type=media_type)
        self._later(call, self._span(self.profile.patience_s), self._caller_gives_up, call)
        return call.call_id

    def _caller_gives_up(self, call: _Call) -> None:
        if call.agent is None or call.agent.phase == "ringing":
            self._end(call, "caller", "cancel")

    # -- commands ----------------------------------------------------------------------------------
    async def _read_commands(self) -> None:
        stream = self.keys.commands(self.edge_id)
        while True:
            resp: Any = await self.redis.xread({stream: self._last_command}, count=200, block=100)
            for _stream, entries in resp or []:
                for entry_id, fields in entries:
                    self._last_command = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    entry = decode(fields, entry_id)
                    self._execute(entry.type, entry.data)

    def _execute(self, ctype: str, d: dict[str, Any]) -> None:
        call = self.calls.get(d["call_id"])
        if call is None or call.ended:
            self.ignored[ctype] += 1
            return
        if ctype == "command.media":
            self._media(call, d["purpose"], d["uri"])
        elif ctype == "command.ring":
            self._ring(call, d["offer_id"], d["agent_id"], float(d["timeout_s"]))
        elif ctype == "command.cancel_ring":
            leg = call.agent
            if leg is None or leg.offer_id != d["offer_id"] or leg.phase != "ringing":
                self.ignored[ctype] += 1
                return
            call.agent = None
            self._report(call, "report.agent_failed", offer_id=leg.offer_id, agent_id=leg.agent_id,
                         reason="cancelled")
        elif ctype in ("command.reject", "command.hangup"):
            self._end(call, "edge", d["reason"])
        else:
            self.ignored[ctype] += 1

    def _media(self, call: _Call, purpose: str, uri: str) -> None:
        call.media = purpose

        def answered() -> None:
            if call.media != purpose:
                return
            self._report(call, "report.media_answered", purpose=purpose, uri=uri)
            if purpose != "queue":  # the queue media loops; announcements end
                self._later(call, self._span(self.profile.welcome_s), ended)

        def ended() -> None:
            if call.media == purpose:
                call.media = None
                self._report(call, "report.media_ended", purpose=purpose)

        self._later(call, self._span(self.profile.media_setup_s), answered)

    def _ring(self, call: _Call, offer_id: str, agent_id: str, timeout_s: float) -> None:
        if call.agent is not None:
            self.ignored["command.ring"] += 1
            return
        leg = _Leg(offer_id, agent_id, "ringing")
        call.agent = leg
        p, roll = self.profile, self.rng.random()

        def answer() -> None:
            if call.agent is leg and leg.phase == "ringing":
                leg.phase = "connected"
                call.media = None  # the edge drops the media leg itself
                self._report(call, "report.agent_answered", offer_id=offer_id, agent_id=agent_id)
                by = "caller" if self.rng.random() < p.p_caller_ends_talk else "agent"
                self._later(call, self._span(p.talk_s), self._end, call, by, "bye")

        def fail(reason: str, code: int | None) -> None:
            if call.agent is leg and leg.phase == "ringing":
                call.agent = None
                data: dict[str, Any] = {"offer_id": offer_id, "agent_id": agent_id, "reason": reason}
                if code is not None:
                    data["code"] = code
                self._report(call, "report.agent_failed", **data)

        if roll < p.p_answer:
            self._later(call, min(self._span(p.answer_s), timeout_s * 0.9), answer)
        elif roll < p.p_answer + p.p_reject:
            self._later(call, self._span(p.reject_s), fail, "busy", 486)
        else:
            self._later(call, timeout_s, fail, "no_answer", None)

    def _end(self, call: _Call, by: str, reason: str) -> None:
        if call.ended:
            return
        call.ended = True
        call.agent = None
        call.media = None
        for t in call.timers:
            t.cancel()
        self._report(call, "report.call_ended", by=by, reason=reason)

    # -- plumbing ----------------------------------------------------------------------------------
    def _span(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)

    def _later(self, call: _Call, delay: float, fn: Any, *args: Any) -> None:
        def run() -> None:
            if not call.ended:
                fn(*args)
        call.timers.append(asyncio.get_running_loop().call_later(delay, run))

    def _report(self, call: _Call, rtype: str, **data: Any) -> None:
        call.seq += 1
        self.reports[rtype] += 1
        self._unpublished += 1
        self._outbox.put_nowait((rtype, {**data, "call_id": call.call_id, "edge": self.edge_id,
                                         "seq": call.seq, "ts": int(time.time() * 1000)}))

    async def _publish(self) -> None:
        """Append reports in the order they happened (one pipeline per batch)."""
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < 200:
                batch.append(self._outbox.get_nowait())
            async with self.redis.pipeline(transaction=False) as pipe:
                for rtype, data in batch:
                    pipe.xadd(self.keys.reports, encode(rtype, data))  # type: ignore[arg-type]
                await pipe.execute()
            self._unpublished -= len(batch)
