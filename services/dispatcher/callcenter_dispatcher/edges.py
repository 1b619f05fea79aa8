"""The lost-edge loop: ends the calls of sip-edges whose heartbeat lapsed.

Reads: `cc:{t}:edges` (heartbeats, score = last beat in ms). Writes: nothing itself; the atomic
edge_lost step removes the edge and ends each of its calls (failed, system, edge_lost), which
releases the agents and emits call.ended (the CDR).

Any number of dispatcher replicas run it: the step checks the heartbeat again inside Redis, so an
edge that came back in the meantime is left alone and a second replica finds nothing to do.
"""

from __future__ import annotations

import structlog

from callcenter.store import RC, Store, now_ms

log = structlog.get_logger(__name__)

CHECK_INTERVAL_MS = 1000
CALLS_PER_STEP = 500


async def check_edges(store: Store, lapse_ms: int, now: int | None = None) -> dict[str, int]:
    """One pass: every edge whose last beat is older than `lapse_ms`; the calls ended per edge."""
    ts = now_ms() if now is None else now
    lapsed = await store.redis.zrangebyscore(store.keys.edges, "-inf", f"({ts - lapse_ms}")
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
            log.warning("edge.lost", edge_id=edge, calls_ended=total, lapse_ms=lapse_ms)
    return ended
