"""An analytics consumer of callcenter's event stream: per-flow service level and abandon rate.

It attaches its own consumer group (`analytics-example`) to `cc:{<tenant>}:events`, so it reads
every event without taking any from the cdr-writer or anyone else, and the stream keeps what it
has not acknowledged (docs/events.md, "Retention"). It needs only redis-py and msgpack, like any
program outside this repository.

Per flow it counts, as the api's GET /v1/service-level does:

    offered         call.arrived, less the call.rejected of the same step (refused at arrival)
    answered        call.connected;   answered_in_t:  those with wait_ms <= T
    abandoned       call.abandoned;   abandoned_in_t: those with wait_ms <= T
    service level   100 * answered_in_t / (offered - abandoned_in_t), at most 100
    abandon rate    abandoned / offered

The counts live in a Redis hash `analytics:{<tenant>}:sl` (same hash tag as the stream, so one
cluster slot), field `<flow>|<count>`, updated in the same MULTI as the XACK of the entries they
come from: a crash never counts an event twice nor loses one. Entries of an unknown type or of a
version it does not know are skipped (acknowledged): new types and new fields are additive.

    python examples/analytics/consumer.py --redis-url redis://127.0.0.1:6379/0 --tenant default
    python examples/analytics/consumer.py --redis-url redis+cluster://10.0.0.1:6379,10.0.0.2:6379
    python examples/analytics/consumer.py --print   # the figures so far, as JSON
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
from typing import Any

import msgpack
import redis
from redis.cluster import ClusterNode
from redis.sentinel import Sentinel

GROUP = "analytics-example"
COUNTS = ("offered", "answered", "answered_in_t", "abandoned", "abandoned_in_t")
VERSIONS = {"call.arrived": 1, "call.rejected": 1, "call.connected": 1, "call.abandoned": 1}  # what it reads


def client(url: str) -> Any:
    """A client for the URLs callcenter's CC_REDIS_URL takes: redis:// (one server),
    redis+cluster://host:port[,host:port] (a Redis Cluster), redis+sentinel://host:port[,...]/service."""
    scheme, _, rest = url.partition("://")
    hosts, _, path = rest.partition("/")
    nodes = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts.split(",")]
    if scheme == "redis+cluster":
        return redis.RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes])
    if scheme == "redis+sentinel":
        return Sentinel(nodes).master_for(path.split("/")[0])
    return redis.Redis.from_url(url)


def keys(tenant: str) -> tuple[str, str]:
    """The events stream and this consumer's figures hash."""
    return f"cc:{{{tenant}}}:events", f"analytics:{{{tenant}}}:sl"


def attach(r: redis.Redis, tenant: str, start: str = "0") -> None:
    """Create the group (from the start of the stream by default); already there is fine."""
    try:
        r.xgroup_create(keys(tenant)[0], GROUP, id=start, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def changes(etype: str, data: dict[str, Any], threshold_ms: int) -> list[tuple[str, int]]:
    """The counts one event changes: (`<flow>|<count>`, delta)."""
    flow = str(data.get("flow", ""))
    if etype == "call.arrived":
        return [(f"{flow}|offered", 1)]
    if etype == "call.rejected":
        return [(f"{flow}|offered", -1)]
    if etype in ("call.connected", "call.abandoned"):
        kind = "answered" if etype == "call.connected" else "abandoned"
        out = [(f"{flow}|{kind}", 1)]
        if int(data["wait_ms"]) <= threshold_ms:
            out.append((f"{flow}|{kind}_in_t", 1))
        return out
    return []


def consume_once(r: redis.Redis, tenant: str, consumer: str, threshold_ms: int, block_ms: int = 1000,
                 count: int = 500) -> int:
    """Read one batch (first this consumer's own pending entries, then new ones), count and ack in
    one MULTI. The number of entries handled."""
    stream, figures = keys(tenant)
    entries: list[tuple[Any, dict[Any, Any]]] = []
    for start, block in (("0", None), (">", block_ms)):
        resp: Any = r.xreadgroup(GROUP, consumer, {stream: start}, count=count, block=block)
        for _stream, got in resp or []:
            entries.extend(got)
        if entries:
            break
    if not entries:
        return 0
    pipe = r.pipeline(transaction=True)
    for _eid, fields in entries:
        etype = fields.get(b"type", b"").decode()
        if VERSIONS.get(etype) != int(fields.get(b"v", b"0")):
            continue  # not a type (or version) this consumer reads
        for field, delta in changes(etype, msgpack.unpackb(fields[b"data"], raw=False), threshold_ms):
            pipe.hincrby(figures, field, delta)
    pipe.xack(stream, GROUP, *[eid for eid, _ in entries])
    pipe.execute()
    return len(entries)


def figures(r: redis.Redis, tenant: str) -> dict[str, dict[str, Any]]:
    """Per flow: the counts, the service level (%) and the abandon rate (null when undefined)."""
    out: dict[str, dict[str, Any]] = {}
    for field, value in r.hgetall(keys(tenant)[1]).items():
        flow, _, count = field.decode().rpartition("|")
        out.setdefault(flow, dict.fromkeys(COUNTS, 0))[count] = int(value)
    for f in out.values():
        measured = f["offered"] - f["abandoned_in_t"]
        f["service_level_pct"] = min(100.0, 100.0 * f["answered_in_t"] / measured) if measured > 0 else None
        f["abandon_rate"] = f["abandoned"] / f["offered"] if f["offered"] > 0 else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--threshold-s", type=int, default=20, help="service-level threshold T")
    parser.add_argument("--consumer", default=f"analytics-{socket.gethostname()}")
    parser.add_argument("--print", action="store_true", help="print the figures so far and exit")
    args = parser.parse_args()
    r = client(args.redis_url)
    if args.print:
        print(json.dumps(figures(r, args.tenant), indent=2, sort_keys=True))  # noqa: T201
        return
    attach(r, args.tenant)
    stop = False

    def request_stop(*_: Any) -> None:
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop:
        consume_once(r, args.tenant, args.consumer, args.threshold_s * 1000)


if __name__ == "__main__":
    main()
