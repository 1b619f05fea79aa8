"""Writes that must not repeat, and writes that should reach a replica before we move on.

Exactly once across a lost reply: a MULTI/EXEC that Redis applied (and wrote to its AOF) can still
fail at the client when the connection drops before EXEC's reply arrives (a restart, a failover).
A publisher that retries such a batch appends it twice. `once_marker` queues, first in the
transaction, a SET of a marker key (in the tenant's slot) to a token unique to the batch; before
sending the batch again after a failure, `already_landed` reads the marker: the batch's own token
means the first try was applied, and it is not sent again. The marker is one key per writer
(overwritten by each batch) with an expiry, so a writer that goes away leaves nothing behind.

WAIT: `CC_REDIS_WAIT_REPLICAS` > 0 makes the transactions of the callers that ask for it (the
sip-edge's report batches, the dispatcher's acknowledgements after its steps) send
`WAIT numreplicas timeout` right after EXEC, on the same connection to the master of the tenant's
slot, so the number it returns counts the replicas that hold those writes (and every write before
them: replication is one ordered stream). Replicas that did not acknowledge in time are counted
(`callcenter_redis_wait_missing_total`) and logged: the write is not undone, and Redis is not made
strongly consistent; WAIT narrows the window in which a failover loses an acknowledged write.

Reads: the marker key (after a failed try). Writes: the marker key, EX `MARKER_TTL_S`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

log = structlog.get_logger(__name__)

# a marker outlives any retry of its batch by far (a writer retries while Redis is away)
MARKER_TTL_S = 86_400


@dataclass(frozen=True)
class ReplicaWait:
    """`WAIT replicas timeout_ms` after a transaction."""

    replicas: int
    timeout_ms: int

    @classmethod
    def of(cls, replicas: int, timeout_ms: int) -> ReplicaWait | None:
        """The WAIT the settings ask for; None when off (0 replicas)."""
        return cls(replicas, timeout_ms) if replicas > 0 else None


class WaitingTransaction(Pipeline):
    """A transaction pipeline that can send WAIT right after its EXEC, on the same connection
    (`wait_after`); `acknowledged` is then what WAIT returned (-1: WAIT itself failed, the
    transaction was applied all the same). The clients of `callcenter.redis.connect` make their
    transactions with it, on every topology (on a cluster, on the master of the transaction's slot)."""

    replica_wait: ReplicaWait | None = None
    acknowledged: int | None = None

    def wait_after(self, wait: ReplicaWait | None) -> None:
        self.replica_wait = wait

    async def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: Any) -> Any:
        self.acknowledged = None
        data = await super()._execute_transaction(connection, commands, raise_on_error)
        wait = self.replica_wait
        if wait is None:
            return data
        try:
            await connection.send_command("WAIT", wait.replicas, wait.timeout_ms)
            self.acknowledged = int(await self.parse_response(connection, "WAIT"))
        except Exception as exc:  # EXEC was answered: its writes stand, only the WAIT failed
            log.warning("redis.wait_failed", error=repr(exc))
            self.acknowledged = -1
        return data


def wait_after(pipe: Any, wait: ReplicaWait | None) -> None:
    """Ask `pipe` (a transaction) to WAIT after its EXEC; a pipeline of a client not made by
    `callcenter.redis.connect` cannot, which is an error only if a WAIT is asked for."""
    if wait is None:
        return
    if not isinstance(pipe, WaitingTransaction):
        raise TypeError(f"CC_REDIS_WAIT_REPLICAS needs a client of callcenter.redis.connect, not {type(pipe)}")
    pipe.wait_after(wait)


def expose_wait_count(path: str) -> None:
    """Show `path`'s count of replicas missing a WAIT at 0 from the process's start, with or without
    WAIT configured: an alert on its increase needs the series before the first miss (Prometheus
    sees no increase in a series whose first sample is already 1)."""
    from callcenter.metrics import REDIS_WAIT_MISSING

    REDIS_WAIT_MISSING.labels(path)


def note_wait(pipe: Any, wait: ReplicaWait | None, path: str, **context: Any) -> int:
    """Count and log the replicas that did not acknowledge `pipe`'s WAIT in time; returns that
    number (0 without a WAIT)."""
    if wait is None or not isinstance(pipe, WaitingTransaction) or pipe.acknowledged is None:
        return 0
    from callcenter.metrics import REDIS_WAIT_MISSING  # metrics builds its pipelines on this module

    missing = wait.replicas - max(pipe.acknowledged, 0)
    if missing > 0:
        REDIS_WAIT_MISSING.labels(path).inc(missing)
        log.warning("redis.wait_short", path=path, wanted=wait.replicas, acknowledged=pipe.acknowledged,
                    timeout_ms=wait.timeout_ms, **context)
    return max(missing, 0)


def once_marker(pipe: Any, key: str, token: str) -> None:
    """Queue, in the transaction `pipe`, the marker that says this batch (`token`) was applied."""
    pipe.set(key, token, ex=MARKER_TTL_S)


async def already_landed(redis: Redis, key: str, token: str) -> bool:
    """True if the batch `token` was applied (its marker is the last one written), after a try
    whose reply was lost."""
    value = await redis.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    return value == token

