"""CC_REDIS_URL names the topology by its scheme (callcenter.redis_topology), and every client that
`callcenter.redis.connect` makes counts its failures (Redis away) in callcenter_redis_errors_total."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster

from callcenter.metrics import REDIS_ERRORS, CountingRedis
from callcenter.redis import REDIS_DOWN, connect
from callcenter.redis_topology import parse_redis_url, stream_read_keys
from callcenter.settings import CommonSettings


def test_a_plain_url_is_one_server() -> None:
    t = parse_redis_url("redis://:pw@10.0.0.1:6380/2")
    assert t.kind == "single" and t.url == "redis://:pw@10.0.0.1:6380/2"


def test_a_cluster_url_lists_its_start_nodes_and_credentials() -> None:
    t = parse_redis_url("redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001/?socket_timeout=2.5")
    assert t.kind == "cluster"
    assert t.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (t.username, t.password, t.options) == ("app", "s3cret", {"socket_timeout": 2.5})


def test_a_sentinel_url_names_the_service_and_db() -> None:
    t = parse_redis_url("redis+sentinel://s1:26379,s2:26379,s3:26379/cc/3?sentinel_password=x")
    assert t.kind == "sentinel" and t.service == "cc" and t.db == 3 and t.sentinel_password == "x"
    assert [h for h, _ in t.nodes] == ["s1", "s2", "s3"]


@pytest.mark.parametrize("url", ["memcached://h:1", "redis+cluster://h", "redis+cluster://h:1/5",
                                 "redis+sentinel://h:1", "redis+cluster://h:1/?db=2"])
def test_a_malformed_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)
    with pytest.raises(ValueError):
        CommonSettings(redis_url=url)


def test_stream_reads_are_routed_by_their_streams() -> None:
    args = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 100, "STREAMS", b"cc:{t}:a", "cc:{t}:b", ">", ">")
    assert stream_read_keys(args) == [b"cc:{t}:a", "cc:{t}:b"]
    assert stream_read_keys(("XREAD", "streams", "k", "0")) == ["k"]
    assert stream_read_keys(("GET", "k")) is None


def test_each_topology_gets_its_counting_client() -> None:
    assert isinstance(connect("redis://127.0.0.1:1/0"), CountingRedis)
    assert isinstance(connect("redis+cluster://127.0.0.1:1"), RedisCluster)
    assert isinstance(connect("redis+sentinel://127.0.0.1:1/cc"), CountingRedis)


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:1", "redis+sentinel://127.0.0.1:1/cc"])
def test_a_cluster_or_sentinel_out_of_reach_is_counted_as_redis_errors(url: str) -> None:
    async def attempt() -> None:
        client = connect(url)
        with pytest.raises(REDIS_DOWN):
            await client.get("cc:{t}:x")
        await client.aclose()
    before = REDIS_ERRORS._value.get()
    asyncio.run(attempt())
    assert REDIS_ERRORS._value.get() > before
