"""What one edge owns alone: its SIP port and its id.

The port: the UDP socket is bound without SO_REUSEADDR/SO_REUSEPORT (sippy/transport.py), so a
second process cannot bind a port a running edge holds (Linux would otherwise hand every datagram
to the newest socket). The id: a lease in Redis, `cc:{t}:edge:<id>:lease`, taken at start,
renewed by every heartbeat (`edge_beat.lua`, which also writes the heartbeat) and released at a
clean stop (`edge_release.lua`). Its time to live is half the lapse (`CC_EDGE_LAPSE_MS`; the
heartbeat renews it at least twice in that time), so the lease of an edge that died frees the id
half a lapse before the dispatchers would declare it lost: a process restarted at once under the
same id (Kubernetes, systemd `Restart=`) beats within the lapse and adopts its calls (adoption.py).

The address group (`CC_EDGE_GROUP`): edges that share one SIP address (behind an SBC, a floating
IP). Each beat records it; when one of them is lost, a live peer of its group adopts its calls
(edge_lost.lua, command.adopt). A beat after the dispatchers declared this edge lost says so
(`declared_lost_ms`): its calls of then were ended or adopted, and the service drops them.

Reads and writes: the lease key, the heartbeat `cc:{t}:edges`, the edge's group and lost mark
(`cc:{t}:edge:<id>:info`, `cc:{t}:edgegroup:<group>`), through those steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time

import redis.asyncio as aioredis
import structlog

from callcenter.redis import REDIS_DOWN
from callcenter.store import RC, Store

log = structlog.get_logger(__name__)

# while another process holds the id: how often to try again, and how long beyond its lapse
TAKE_POLL_S = 0.2
TAKE_MARGIN_S = 1.0

# the process exit code of an edge that refuses to start because another process owns its port or id
# (EX_TEMPFAIL: it clears when the other process is gone)
EXIT_START_REFUSED = 75


class StartRefused(Exception):
    """The edge cannot start: another process owns its SIP port or its id (the message says which)."""


class IdLease:
    """The lease on this edge's id, held by a token of this process (`host/pid/random`, so that a
    refusal can say who holds it). Every heartbeat goes through it (`beat`)."""

    def __init__(self, redis: aioredis.Redis, tenant: str, edge_id: str, lapse_ms: int, group: str = "") -> None:
        self.redis = redis
        self.group = group   # CC_EDGE_GROUP: the edges that share this edge's SIP address
        self.declared_lost_ms: int | None = None   # set by a beat after edge_lost ran for this id
        self.tenant = tenant
        self._store: Store | None = None
        self.edge_id = edge_id
        self.lapse_ms = lapse_ms
        # the lease's time to live: shorter than the lapse, so a successor beats before it ends
        self.lease_ms = max(1, lapse_ms // 2)
        self.token = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"

    @property
    def store(self) -> Store:
        """The steps on Redis, built at first use (building the service does nothing with Redis)."""
        if self._store is None:
            self._store = Store(self.redis, self.tenant)
        return self._store

    async def take(self, stop: asyncio.Event) -> bool:
        """Take the id, waiting while another process holds it: True once held (the first heartbeat
        is written), False when `stop` was set first. Raises StartRefused when the holder keeps it
        for a lapse and a margin: it is alive and renewing it. A holder that died frees it within
        the lapse, so a restart right after a crash starts that much later, never refused. Redis
        being away is waited out (nobody can tell whether the id is free)."""
        holder, refuse_at, delay = "", 0.0, TAKE_POLL_S
        while not stop.is_set():
            try:
                res = await self.store.edge_beat(self.edge_id, self.token, self.lease_ms, self.group)
            except REDIS_DOWN as exc:
                log.warning("edge.redis_unavailable", error=repr(exc), retry_in_s=delay)
                await _wait(stop, delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = TAKE_POLL_S
            if res.rc is RC.OK:
                return True
            if res.rc is not RC.ALREADY:
                raise RuntimeError(f"edge_beat: {res.rc.name} {res.detail}")
            if res.detail != holder:   # a (new) holder: it gets a whole lapse to let go
                holder = res.detail
                wait_s = self.lapse_ms / 1000 + TAKE_MARGIN_S
                refuse_at = time.monotonic() + wait_s
                log.warning("edge.id_held", edge_id=self.edge_id, holder=holder, waiting_s=wait_s)
            if time.monotonic() >= refuse_at:
                raise StartRefused(f"edge id {self.edge_id} is held by a live process ({holder}): it renewed its "
                                   f"lease for {self.lapse_ms / 1000 + TAKE_MARGIN_S:.1f} s; give this edge "
                                   "another CC_EDGE_ID or stop the other one")
            await _wait(stop, TAKE_POLL_S)
        return False

    async def beat(self) -> bool:
        """One heartbeat, renewing the lease (taking it again if it expired while Redis was away):
        False when another process took the id meanwhile (nothing written); `declared_lost_ms` set
        when the dispatchers had declared this edge lost (edge_lost). Redis errors propagate."""
        res = await self.store.edge_beat(self.edge_id, self.token, self.lease_ms, self.group)
        if res.rc is RC.ALREADY:
            log.error("edge.lease_lost", edge_id=self.edge_id, holder=res.detail)
            return False
        if res.rc is RC.OK and res.detail:
            # the dispatchers declared this edge lost meanwhile (it was cut off or stopped for a
            # lapse): the calls it had then were ended or handed to a peer (the service drops them)
            self.declared_lost_ms = int(res.detail)
            # unaware_ms: how long this edge carried calls it no longer owned, by its own clock
            log.error("edge.declared_lost", edge_id=self.edge_id, lost_ms=self.declared_lost_ms,
                      unaware_ms=max(0, int(time.time() * 1000) - self.declared_lost_ms))
        return True

    async def release(self) -> None:
        """At a clean stop: the id is free at once and, once no call of this id is left, the heartbeat
        is gone (with calls left it stays: edge_release.lua). With Redis away the lease simply
        expires (and the dispatchers find an edge without calls after the lapse)."""
        try:
            res = await self.store.edge_release(self.edge_id, self.token)
        except REDIS_DOWN as exc:
            log.warning("edge.release_failed", error=repr(exc))
            return
        if res.rc is not RC.OK:
            log.warning("edge.release_not_held", edge_id=self.edge_id)
        elif res.detail:
            # calls of this id still live (a predecessor's, when this process could not start): the
            # heartbeat stays for a successor to adopt them within the lapse, or for edge_lost
            log.warning("edge.released_with_calls", edge_id=self.edge_id, calls=int(res.detail))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
