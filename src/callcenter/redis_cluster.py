"""MULTI/EXEC (with WATCH) on a Redis Cluster, for one tenant's keys.

redis-py's asyncio cluster pipeline runs a transaction's commands on threads of their own with a
new event loop each, and its WATCH never runs (8.1: the coroutine is dropped). Our transactions
only ever name keys of one tenant, so of one slot: `SlotTransaction` is redis-py's plain asyncio
`Pipeline`, whose connection pool is chosen when the first key is known (the WATCHed key, or the
first queued command's) as the pool of the master that serves that slot. A MOVED or ASK answer
(the slot changed master meanwhile) refreshes the cluster's map and, without a WATCH, runs the
transaction again on the new master; with a WATCH it is raised as `ClusterDownError`, which the
callers wait out like any Redis outage and try again from their read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import AskError, ClusterDownError, ResponseError

from callcenter.metrics import CountingPipeline

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

_MOVED = ("MOVED", "ASK", "EXECABORT")


def _node_kwargs(cluster: RedisCluster) -> dict[str, Any]:
    kwargs: dict[str, Any] = cluster.connection_kwargs
    return {k: kwargs[k] for k in ("username", "password", "socket_timeout", "socket_connect_timeout")
            if kwargs.get(k) is not None}


class SlotTransaction(CountingPipeline):
    """A transaction (`pipeline(transaction=True)`) of a cluster client on the master of its slot."""

    def __init__(self, cluster: RedisCluster, pools: dict[tuple[str, int], ConnectionPool]) -> None:
        self._cluster = cluster
        self._pools = pools
        super().__init__(None, cluster.response_callbacks, True, None)  # type: ignore[arg-type]

    async def _pin(self, key: Any) -> None:
        if self.connection is not None:
            return
        if self._cluster._initialize:
            await self._cluster.initialize()
        node = self._cluster.get_node_from_key(key)
        if node is None:
            raise ClusterDownError(f"no node serves the slot of {key!r}")
        address: tuple[str, int] = (str(node.host), int(node.port))
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = ConnectionPool(host=address[0], port=address[1],
                                                         **_node_kwargs(self._cluster))
        self.connection_pool = pool

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]
        await self._pin(names[0])
        try:
            return await super().watch(*names)
        except ResponseError as exc:
            raise await self._moved(exc) from exc

    async def execute(self, raise_on_error: bool = True) -> Any:
        if self.watching:
            try:
                return await super().execute(raise_on_error)
            except ResponseError as exc:
                raise await self._moved(exc) from exc
        stack = list(self.command_stack)
        for attempt in range(3):
            self.command_stack = list(stack)
            first = next((args[1] for args, _ in stack if len(args) > 1), None)
            if first is not None:
                await self._pin(first)
            try:
                return await super().execute(raise_on_error)
            except ResponseError as exc:
                error = await self._moved(exc)
                if attempt == 2:
                    raise error from exc
                self.connection = None
        raise AssertionError("unreachable")

    async def _moved(self, exc: ResponseError) -> Exception:
        """The error to raise for `exc`: a slot that moved becomes ClusterDownError (after the map
        is refreshed); anything else is itself."""
        # a queued command's MOVED comes back as MovedError ("Command # 1 (...) of pipeline caused
        # error"), an EXEC refused for it as EXECABORT
        if not isinstance(exc, AskError) and not any(word in _MOVED for word in str(exc).split()):
            return exc
        self._cluster._initialize = True  # the next command re-reads the slot map
        return ClusterDownError(f"the slot moved during a transaction: {exc}")
