"""The report publisher's one-send MULTI ... EXEC (callcenter_sip_edge/transaction.py) on a real Redis.

The replies are EXEC's, as a pipeline's; an error reply is raised once every reply is read, so the
kept connection stays in step for the next batch; a batch takes no connection from the pool (the
same one serves every batch); a connection that Redis closed is opened again for the next batch.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from callcenter.contract.reports import CallArrived
from callcenter.redis import connect
from callcenter.store.keys import Keys
from callcenter_dev.servers import RedisServer
from callcenter_sip_edge.checkpoint import Checkpoints
from callcenter_sip_edge.publisher import ReportPublisher
from callcenter_sip_edge.transaction import OneSend

KEYS = Keys("one")


async def test_replies_and_errors_keep_the_connection_in_step(redis_server: RedisServer,
                                                              redis: aioredis.Redis) -> None:
    client = connect(redis_server.url)
    tx = OneSend(client)
    # the replies as Redis gives them
    assert await tx.execute([("SET", "k", "v"), ("INCR", "n"), ("HSET", "h", "f", 1)]) == [b"OK", 1, 1]
    # an error while EXEC runs (the other commands ran): raised after the whole reply is read
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await tx.execute([("INCR", "n"), ("HSET", "k", "f", 1), ("INCR", "n")])
    assert await redis.get("n") == b"3"
    # a command refused when queued: nothing runs (EXECABORT), the error of the command is raised
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        await tx.execute([("INCR", "n"), ("HSET", "h")])
    assert await redis.get("n") == b"3"
    assert await tx.execute([("INCR", "n")]) == [4]
    await tx.close()
    await client.aclose()


async def test_a_publisher_keeps_one_connection_and_reconnects_after_a_drop(redis_server: RedisServer,
                                                                          redis: aioredis.Redis) -> None:
    client = connect(redis_server.url)
    publisher = ReportPublisher(client, KEYS, "e1", Checkpoints(client, KEYS, "e1"))
    assert publisher.one_send is not None
    for n in range(5):
        await publisher.publish([CallArrived(call_id=f"c{n}", edge="e1", seq=1, ts=1, flow="f", caller="ann",
                                             caller_uri="sip:ann@x", sip_call_id=f"c{n}@x", source="127.0.0.1:5")])
    pool = client.connection_pool
    assert len(pool._in_use_connections) == 1   # type: ignore[attr-defined]   # the kept one, not one per batch
    assert await redis.xlen(KEYS.reports) == 5
    await redis.client_kill_filter(skipme=True)   # every other client: the kept connection too
    await publisher.publish([CallArrived(call_id="c9", edge="e1", seq=1, ts=1, flow="f", caller="ann",
                                         caller_uri="sip:ann@x", sip_call_id="c9@x", source="127.0.0.1:5")])
    assert await redis.xlen(KEYS.reports) == 6   # once: the try on the dropped connection did not land
    assert await redis.hget(KEYS.dialog("c9"), "seq") == b"1"
    await client.aclose()
