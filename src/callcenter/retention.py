"""Stream retention that respects readers: trims a tenant's streams (reports, events, each edge's
commands) only below what every registered consumer group has acknowledged, with a hard length
cap as the last fuse.

Reads XINFO GROUPS and XPENDING of each stream, `cc:{t}:edges` (which edges have a command
stream) and the caps of `cc:{t}:config` (`events_maxlen`, `commands_maxlen`, `reports_maxlen`).
Writes XTRIM MINID on each stream; when a stream is over its cap after that (a group so far
behind that the unread entries would outgrow Redis), first a `stream.capped` event on
`cc:{t}:events` and a count in `cc:{t}:retention` (the metric: `capped:<stream>` = times the fuse
blew, `capped_unread:<stream>` = entries trimmed unread), and only then XTRIM MAXLEN to the cap.

An entry is acknowledged by a group when its id is at most the group's last-delivered-id and it
is not in the group's pending list: so every entry before min(oldest pending, last-delivered) of
every group may go. A stream without any group is never trimmed below its cap (whoever reads it
has not registered yet). Entries younger than `keep_ms` stay too, for readers without a group
(the api's event feed resumes by id) and for diagnosis.

Any number of processes may run it at once (every dispatcher does, from its reconciler loop):
XTRIM MINID is idempotent, and the fuse takes a short lock so one alarm is raised per blow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from callcenter.contract.codec import encode
from callcenter.redis import text
from callcenter.store.config import PARAMS
from callcenter.store.keys import Keys

log = structlog.get_logger(__name__)

FUSE_LOCK_MS = 2000


def stream_id(entry_id: str) -> tuple[int, int]:
    """A stream id `ms-seq` as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class Trimmed:
    """What one pass did: entries trimmed per stream (all acknowledged) and the streams whose fuse blew."""

    acknowledged: dict[str, int] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)  # stream -> entries trimmed that a group had not read


async def oldest_unacknowledged(redis: Redis, stream: str) -> str | None:
    """The id from which every registered group still needs the stream (entries before it are
    acknowledged by all); None when the stream has no group or does not exist."""
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return None
    keep: str | None = None
    for group in groups:
        name = text(group["name"])
        held = text(group["last-delivered-id"])
        if int(group.get("pending") or 0):
            pending: Any = await redis.xpending(stream, name)
            if pending["pending"]:
                held = min(held, text(pending["min"]), key=stream_id)
        keep = held if keep is None else min(keep, held, key=stream_id)
    return keep


async def _cap(redis: Redis, keys: Keys, name: str) -> int:
    raw = await redis.hget(keys.config, name)
    try:
        return int(text(raw)) if raw not in (None, b"", "") else int(PARAMS[name].default)
    except ValueError:  # the api checks writes; a hand-edited value falls back to the default
        return int(PARAMS[name].default)


async def trim_stream(redis: Redis, keys: Keys, stream: str, cap: int, keep_ms: int, now: int,
                      done: Trimmed) -> None:
    """One stream: trim what every group acknowledged (and is older than keep_ms), then the fuse."""
    keep_from = await oldest_unacknowledged(redis, stream)
    if keep_from is not None:
        keep_from = min(keep_from, f"{max(now - keep_ms, 0)}-0", key=stream_id)
        n = int(await redis.xtrim(stream, minid=keep_from, approximate=False))
        if n:
            done.acknowledged[stream] = n
    length = int(await redis.xlen(stream))
    if length <= cap:
        return
    # the fuse: a group is so far behind that keeping its unread entries would outgrow Redis
    if not await redis.set(keys.prefix + "retention:fuse:" + stream, "1", nx=True, px=FUSE_LOCK_MS):
        return  # another process is blowing this fuse right now
    over = length - cap
    log.error("retention.fuse", stream=stream, length=length, cap=cap, unread_trimmed=over)
    event = encode("stream.capped", {"ts": now, "stream": stream.removeprefix(keys.prefix), "length": length,
                                     "cap": cap, "trimmed": over})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.events, event)  # type: ignore[arg-type]
        pipe.hincrby(keys.retention, "capped:" + stream.removeprefix(keys.prefix), 1)
        pipe.hincrby(keys.retention, "capped_unread:" + stream.removeprefix(keys.prefix), over)
        await pipe.execute()
    trimmed = int(await redis.xtrim(stream, maxlen=cap, approximate=False))
    done.capped[stream] = trimmed


async def trim_streams(redis: Redis, keys: Keys, now: int, reports_keep_ms: int, events_keep_ms: int) -> Trimmed:
    """One pass over the tenant's streams: reports, events and the command stream of every known edge."""
    done = Trimmed()
    await trim_stream(redis, keys, keys.reports, await _cap(redis, keys, "reports_maxlen"), reports_keep_ms, now, done)
    await trim_stream(redis, keys, keys.events, await _cap(redis, keys, "events_maxlen"), events_keep_ms, now, done)
    commands_cap = await _cap(redis, keys, "commands_maxlen")
    for edge in await redis.zrange(keys.edges, 0, -1):
        await trim_stream(redis, keys, keys.commands(text(edge)), commands_cap, events_keep_ms, now, done)
    return done
