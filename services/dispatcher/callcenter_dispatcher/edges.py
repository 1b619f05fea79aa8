"""The lost-edge loop: ends the calls of sip-edges whose heartbeat lapsed.

Reads: `cc:{t}:edges` (heartbeats, score = last beat in ms). Writes: nothing itself; the atomic
edge_lost step removes the edge and ends each of its calls (failed, system, edge_lost), which
releases the agents and emits call.ended (the CDR).

Any number of dispatcher replicas run it: the step checks the heartbeat again inside Redis, so an
edge that came back in the meantime is left alone and a second replica finds nothing to do.

A lapse counts only time this dispatcher could see Redis (`EdgeWatch`): while Redis is away (paused,
restarting, cut off from this dispatcher) no heartbeat can land, so that time says nothing about
the edges. After such a gap every edge gets a fresh lapse from the moment Redis answers again; an
edge is lost only when its heartbeats stopped while Redis was visible for longer than the lapse.
"""

from __future__ import annotations

import time

import structlog

from callcenter.metrics import EDGES_LOST
from callcenter.store import RC, Store, now_ms

log = structlog.get_logger(__name__)

CHECK_INTERVAL_MS = 1000
CALLS_PER_STEP = 500


async def check_edges(store: Store, lapse_ms: int, now: int | None = None,
                      seen_since: int | None = None) -> dict[str, int]:
    """One pass: every edge whose last beat is older than `lapse_ms`; the calls ended per edge.
    `seen_since` (ms): Redis has been visible without a gap since then; beats older than that
    count from then (none is lost before a whole lapse of it)."""
    ts = now_ms() if now is None else now
    # always read: this round trip is also how the caller knows Redis is visible
    lapsed = await store.redis.zrangebyscore(store.keys.edges, "-inf", f"({ts - lapse_ms}")
    if seen_since is not None and seen_since > ts - lapse_ms:
        return {}
    ended: dict[str, int] = {}
    for raw in lapsed:
        edge = raw.decode() if isinstance(raw, bytes) else str(raw)
        total = 0
        while True:  # a big edge ends in several steps, so that Redis is never blocked for long
            res = await store.edge_lost(edge, lapse_ms, limit=CALLS_PER_STEP, now=now)
            if res.rc is not RC.OK:
                break
            total += int(res.detail or 0)
            if int(res.detail or 0) < CALLS_PER_STEP:
                break
        if res.rc is RC.OK:
            ended[edge] = total
            EDGES_LOST.inc()
            log.warning("edge.lost", edge_id=edge, calls_ended=total, lapse_ms=lapse_ms)
    return ended



def check_interval_ms(lapse_ms: int) -> int:
    """How often a dispatcher checks the edges: every second, more often for a lapse under 4 s, so
    that a gap in its view of Redis is noticed well within a lapse."""
    return max(50, min(CHECK_INTERVAL_MS, lapse_ms // 4))


class EdgeWatch:
    """One dispatcher's lost-edge check, run every `interval_ms` (`check`), counting only time it
    saw Redis.

    Two passes whose requests were sent more than `blind_after_s` apart (the interval and a quarter
    of the lapse) leave a gap: Redis failed, was paused (a request waited in it), or this process
    stalled. Then the time Redis has been visible starts again (`seen since`). The gap a live edge
    may miss unnoticed is under half a lapse, which a heartbeat interval of at most a quarter lapse
    covers (a beat that waited in a paused Redis is sent again at once by the edge).
    """

    def __init__(self, store: Store, lapse_ms: int) -> None:
        self.store = store
        self.lapse_ms = lapse_ms
        self.interval_ms = check_interval_ms(lapse_ms)
        self.blind_after_s = (self.interval_ms + lapse_ms / 4) / 1000
        self._answered_sent: float | None = None   # when the last pass Redis answered was sent (monotonic)
        self._seen_since_ms = 0

    async def check(self) -> dict[str, int]:
        """One pass (see check_edges); a Redis error propagates, and the next pass starts afresh."""
        sent = time.monotonic()
        last, self._answered_sent = self._answered_sent, None
        if last is None or sent - last > self.blind_after_s:
            self._seen_since_ms = now_ms()
            log.info("edge.watch_fresh_lapse", unseen_s=None if last is None else round(sent - last, 3))
        ended = await check_edges(self.store, self.lapse_ms, seen_since=self._seen_since_ms)
        self._answered_sent = sent
        return ended
