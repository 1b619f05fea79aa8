"""One Redis setting for every topology: `CC_REDIS_URL` names a single server, a Redis Cluster or
a Sentinel-watched master, by its scheme.

    redis://[user:pass@]host:port/db                       one redis-server (redis-py's URL, unchanged)
    rediss://...                                           the same over TLS
    unix:///path/to/redis.sock[?db=N]                      one redis-server on this host, by its Unix socket
    redis+cluster://[user:pass@]host:port[,host:port...]   a Redis Cluster: any of its nodes (the client
                                                           learns the others and follows MOVED/ASK)
    redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]
                                                           the master Sentinel names `service`; the
                                                           userinfo is the data nodes' credentials,
                                                           `?sentinel_password=` the sentinels'

Query parameters of a cluster or sentinel URL: `socket_timeout`, `socket_connect_timeout` (seconds).
A tenant's keys share one hash tag (`cc:{t}:`), so in a cluster each tenant lives on one shard, and
every Lua step, pipeline and transaction of a tenant runs on the master of that shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

CLUSTER = "redis+cluster"
SENTINEL = "redis+sentinel"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed `CC_REDIS_URL`: its kind (single, cluster, sentinel), the nodes to start from (the
    cluster's nodes or the sentinels), the sentinel service name and db, credentials and options."""

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sentinel_password: str | None = None


def _nodes(netloc: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    out = []
    for part in hosts.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"a node must be host:port, got {part!r}")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def parse_redis_url(url: str) -> RedisTarget:
    """The topology a `CC_REDIS_URL` names (ValueError when it cannot be read)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("single", url)
    if scheme not in (CLUSTER, SENTINEL):
        raise ValueError(f"CC_REDIS_URL: unknown scheme {scheme!r} (redis, rediss, unix, {CLUSTER}, {SENTINEL})")
    rest = url.split("://", 1)[1]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    userinfo = netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    options: dict[str, Any] = {}
    sentinel_password = None
    for key, value in parse_qsl(query or urlsplit(url).query):
        if key in ("socket_timeout", "socket_connect_timeout"):
            options[key] = float(value)
        elif key == "sentinel_password" and scheme == SENTINEL:
            sentinel_password = value
        else:
            raise ValueError(f"CC_REDIS_URL: unknown option {key!r}")
    nodes, username, secret = _nodes(netloc), unquote(user) or None, unquote(password) or None
    if scheme == CLUSTER:
        if path.strip("/") not in ("", "0"):
            raise ValueError("CC_REDIS_URL: a Redis Cluster has database 0 only")
        return RedisTarget("cluster", url, nodes, username=username, password=secret, options=options)
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("CC_REDIS_URL: redis+sentinel:// needs the service name as its path")
    return RedisTarget("sentinel", url, nodes, service, int(db or 0), username, secret, options, sentinel_password)


def stream_read_keys(args: tuple[Any, ...]) -> list[Any] | None:
    """The stream keys of an XREAD/XREADGROUP command (its arguments after STREAMS, first half),
    None for any other command.

    redis-py's cluster client asks one fixed node (`COMMAND GETKEYS`) for the keys of commands whose
    keys move (XREAD, XREADGROUP): when that node is down, every read fails, for every tenant, until
    the process restarts. Our cluster clients read them from the arguments instead."""
    if not args or str(args[0]).upper() not in ("XREAD", "XREADGROUP"):
        return None
    words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
    upper = [w.upper() for w in words]
    if "STREAMS" not in upper:
        return None
    rest = args[upper.index("STREAMS") + 1:]
    return list(rest[:len(rest) // 2])
