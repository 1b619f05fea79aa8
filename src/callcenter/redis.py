"""Redis plumbing shared by every service: the client factory, what counts as "Redis is down",
and the one bytes-to-text helper (clients do not use `decode_responses`: stream payloads are
msgpack bytes).
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aioconnection
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, ReadOnlyError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel

from callcenter.redis_topology import RedisTarget, parse_redis_url, stream_read_keys

# Errors after which a service waits and retries rather than failing the unit of work: the server
# is away, or (Redis Cluster, Sentinel) the shard of the tenant is changing master: CLUSTERDOWN,
# TRYAGAIN, a slot no node serves yet, a write that reached a master just demoted.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, ClusterDownError, TryAgainError,
              ReadOnlyError, RedisClusterException)


# The functions of the asyncio client that write a command to its connection's socket.
_SEND_FUNCTIONS = frozenset({"send_packed_command", "_send_packed_command"})


def closed_under_send(exc: BaseException) -> bool:
    """Whether `exc` (an AttributeError or TypeError) came from a connection of the asyncio client
    that another task closed while this one was writing a command to it: the writer is gone
    (`'NoneType' object has no attribute 'writelines'`) or the transport's internals are. The
    cluster client does that to itself when a node fails under several tasks at once: one task's
    recovery disconnects the node's idle connections (`disconnect_free_connections`) while another
    task has just taken one of them for its next command. Nothing was sent; redis-py lets the
    error out as it is, not as a ConnectionError, so neither its own retry nor a service's wait
    for Redis sees it (a Redis Cluster master killed under load stopped a dispatcher this way)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name in _SEND_FUNCTIONS and code.co_filename == aioconnection.__file__:
            return True
        tb = tb.tb_next
    return False


class StreamRoutedRedisCluster(RedisCluster):
    """The synchronous cluster client, routing XREAD/XREADGROUP by their arguments (see
    `stream_read_keys`)."""

    def determine_slot(self, *args: Any) -> int | None:
        keys = stream_read_keys(args)
        if not keys:
            return super().determine_slot(*args)
        slots = {int(self.keyslot(k)) for k in keys}  # type: ignore[no-untyped-call]
        if len(slots) != 1:
            raise RedisClusterException(f"{args[0]} - all keys must map to the same key slot")
        return slots.pop()


def _auth(target: RedisTarget) -> dict[str, Any]:
    return {"username": target.username, "password": target.password, **target.options}


def connect(url: str) -> aioredis.Redis:
    """An asyncio client for `url` (`redis://`, `redis+cluster://`, `redis+sentinel://`:
    `callcenter.redis_topology`); connections are opened lazily, so this never blocks. It counts its
    failures from Redis being away in `callcenter_redis_errors_total`.

    A cluster client is typed as `Redis`: it answers the same commands (each routed to the node of
    its key's slot), which is all the services use."""
    # imported here: metrics reads replies with `text`
    from callcenter.metrics import CountingRedis, CountingRedisCluster

    target = parse_redis_url(url)
    if target.kind == "cluster":
        nodes = [AsyncClusterNode(host, port) for host, port in target.nodes]
        return cast(aioredis.Redis, CountingRedisCluster(startup_nodes=nodes, **_auth(target)))
    if target.kind == "sentinel":
        sentinel = AsyncSentinel(list(target.nodes),  # type: ignore[no-untyped-call]
                                 sentinel_kwargs={"password": target.sentinel_password}, **target.options)
        return cast(aioredis.Redis, sentinel.master_for(target.service, redis_class=CountingRedis,
                                                         db=target.db, **_auth(target)))
    return CountingRedis.from_url(url)


def connect_sync(url: str) -> redis.Redis:
    """A synchronous client for the same URLs (celery jobs, dev tools, tests); not counted."""
    target = parse_redis_url(url)
    if target.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.nodes]  # type: ignore[no-untyped-call]
        return cast(redis.Redis, StreamRoutedRedisCluster(startup_nodes=nodes, **_auth(target)))
    if target.kind == "sentinel":
        sentinel = Sentinel(list(target.nodes),  # type: ignore[no-untyped-call]
                            sentinel_kwargs={"password": target.sentinel_password}, **target.options)
        return cast(redis.Redis, sentinel.master_for(target.service, db=target.db,  # type: ignore[no-untyped-call]
                                                     **_auth(target)))
    return redis.Redis.from_url(url)


def text(value: Any) -> str:
    """A Redis reply (bytes, str, number or None) as text; None is the empty string."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
