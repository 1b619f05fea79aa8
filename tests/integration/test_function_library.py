"""The function library of the Lua steps (`store.sources.library`) on a real redis-server: named
by the hash of its source, two versions side by side (a rolling upgrade), the per-call state of one
tenant never seen by the next call of another, and the entry's checks of KEYS[1] and NOW."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from callcenter.store import RC, Store
from callcenter.store.sources import library, step_names


def test_the_library_and_its_functions_are_named_by_the_hash_of_the_source() -> None:
    lib = library()
    first, rest = lib.source.split("\n", 1)
    assert first == f"#!lua name={lib.name}"
    template = rest.replace(lib.name, "__CC_LIBRARY__")
    assert lib.name == "cc_" + hashlib.sha1(template.encode()).hexdigest()[:12]
    assert lib.functions == {step: f"{lib.name}_{step}" for step in step_names()}


async def _library_names(redis: aioredis.Redis) -> set[str]:
    return {dict(zip(e[::2], e[1::2], strict=True))[b"library_name"].decode() for e in await redis.function_list()}


async def test_two_versions_run_side_by_side(redis: aioredis.Redis) -> None:
    store = Store(redis, "t")
    assert (await store.flow_upsert("f1", {"skill": "sales"})).rc is RC.OK  # loads this version
    lib = library()
    # another version: the same steps under another name, as a changed source would be
    old = lib.source.replace(lib.name, "cc_000000000000")
    await redis.function_load(old, replace=True)
    assert {lib.name, "cc_000000000000"} <= await _library_names(redis)
    raw = await redis.fcall("cc_000000000000_flow_upsert", 1, store.keys.events, 1, "f2", "skill", "sales")
    assert int(raw[0]) == RC.OK
    assert (await store.flow_delete("f1")).rc is RC.OK
    assert await store.flow("f2") is not None and await store.flow("f1") is None
    await redis.function_delete("cc_000000000000")


async def _arrive(store: Store, call_id: str) -> str:
    data = msgpack.packb({"call_id": call_id, "edge": "e1", "seq": 1, "ts": 1, "flow": "f", "caller": "alice",
                          "caller_uri": "sip:alice@127.0.0.1", "sip_call_id": call_id, "source": "127.0.0.1:1"})
    res = await store.apply_report("report.call_arrived", "1-1", data)
    assert res.rc is RC.OK, res
    return res.detail


async def test_no_call_sees_the_state_of_the_last_call_of_another_tenant(redis: aioredis.Redis) -> None:
    """P, K and the config read (`cfg`) live in the library between calls: each call sets its own.
    Tenant a queues a call when no agent is logged in, tenant b (the default) rejects it."""
    a, b = Store(redis, "a"), Store(redis, "b")
    await a.write_config({"reject_on_no_agents": 0})
    for store in (a, b):
        assert (await store.flow_upsert("f", {"skill": "s"})).rc is RC.OK
    assert [await _arrive(a, "c1"), await _arrive(b, "c1"), await _arrive(a, "c2"), await _arrive(b, "c2")] \
        == ["queued", "rejected", "queued", "rejected"]
    for store, state in ((a, "queued"), (b, "ended")):
        for call_id in ("c1", "c2"):
            call = await store.call(call_id)
            assert call is not None and call["state"] == state, (store.keys.events, call)
    keys = {k.decode() for k in await redis.keys("cc:*")}
    assert {k.split("}")[0] for k in keys} == {"cc:{a", "cc:{b"}
    assert await redis.exists(b.keys.config) == 0  # a's config was read for a only


async def test_the_entry_checks_the_declared_key_and_now(redis: aioredis.Redis) -> None:
    store = Store(redis, "t")
    await store.flow_delete("nothing")  # loads the library
    function = library().functions["flow_delete"]
    with pytest.raises(ResponseError, match="not a callcenter key"):
        await redis.fcall(function, 1, "other:key", 1, "f")
    with pytest.raises(ResponseError, match="now_ms"):
        await redis.fcall(function, 1, store.keys.events, "soon", "f")
