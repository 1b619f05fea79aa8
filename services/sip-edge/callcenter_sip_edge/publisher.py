"""The sip-edge's report batches: appended in order, exactly once, optionally WAITed for.

Writes: `cc:{t}:reports` (one XADD per report), the calls' checkpoints (checkpoint.py, planned once
per batch by checkpoint_writes.py), and the
marker `cc:{t}:edge:<edge_id>:published` (this process's token and batch number, EX one day): one
MULTI per batch. A batch that failed is kept and sent again (never dropped, never reordered), but
only after the marker shows that the failed try was not applied: a reply lost to a Redis restart
or failover after EXEC ran must not append the batch twice (callcenter.redis_durability).
With `CC_REDIS_WAIT_REPLICAS`, WAIT follows each EXEC on the same connection. A batch goes in one
send on a connection the publisher keeps (transaction.py), through the client's pipeline on a
Redis Cluster or with WAIT.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio import RedisCluster

from callcenter.contract.reports import Report
from callcenter.redis_durability import (
    MARKER_TTL_S,
    ReplicaWait,
    already_landed,
    expose_wait_count,
    note_wait,
    once_marker,
    wait_after,
)
from callcenter.store.keys import Keys
from callcenter_sip_edge.checkpoint import Checkpoints, DialogCheckpoint
from callcenter_sip_edge.checkpoint_writes import CheckpointPlan
from callcenter_sip_edge.transaction import OneSend

log = structlog.get_logger(__name__)

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
WAIT_PATH = "edge_publish"   # the label of its count of replicas that missed a WAIT


def marker_key(keys: Keys, edge_id: str) -> str:
    """The key that holds the token of the last batch this edge applied (the tenant's slot)."""
    return keys.edge_published(edge_id)


class ReportPublisher:
    """Sends the edge's batches of reports and checkpoints, one MULTI each."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, edge_id: str, checkpoints: Checkpoints,
                 wait: ReplicaWait | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.checkpoints = checkpoints
        self.wait = wait
        self.marker = marker_key(keys, edge_id)
        # unique to this process: a restarted edge with the same id never takes an old marker for its own
        self.writer = f"{edge_id}:{secrets.token_hex(8)}"
        self.batches = 0
        self.landed_on_retry = 0   # batches found applied after a failed try (not sent again)
        expose_wait_count(WAIT_PATH)
        # one send per batch on a kept connection (transaction.py); a cluster client, or a WAIT after
        # EXEC, keeps the client's pipeline
        self.one_send = None if isinstance(redis, RedisCluster) or wait is not None else OneSend(redis)
        # the batch `start` took: (batch, token, reports, plan, written at once), until `finish`
        self._started: tuple[Sequence[Report | DialogCheckpoint], str, list[Report], CheckpointPlan, bool] | None = None

    async def publish(self, batch: Sequence[Report | DialogCheckpoint]) -> None:
        """Apply `batch` once, trying until Redis takes it."""
        token, reports, plan = self._prepare(batch)
        await self._until_applied(batch, token, reports, plan)

    def start(self, batch: Sequence[Report | DialogCheckpoint]) -> bool:
        """Write `batch` now, in the caller's turn of the loop (no await), when the kept connection
        takes it at once; `finish()` then reads its replies (and tries again on a failure, as
        `publish` does). False, nothing planned or written: send it with `publish`. Saves the loop
        iteration a task's wake-up costs between a fact and its MULTI (issue 15: agent BYE -> next
        INVITE)."""
        if not self.can_start():
            return False
        assert self.one_send is not None
        token, reports, plan = self._prepare(batch)
        if not self.one_send.start(self._commands(reports, plan, token)):
            # the buffer would not take it: sent by finish() through the ordinary path
            self._started = (batch, token, reports, plan, False)
            return True
        self._started = (batch, token, reports, plan, True)
        return True

    def can_start(self) -> bool:
        """`start` would take a batch now (a kept connection, up, nothing started before)."""
        return self.one_send is not None and self._started is None and self.one_send.can_start()

    async def finish(self) -> None:
        """Until the batch `start` took is applied (it reads the replies, or sends it again)."""
        assert self._started is not None, "nothing was started"
        (batch, token, reports, plan, written), self._started = self._started, None
        await self._until_applied(batch, token, reports, plan, written=written)

    def _prepare(self, batch: Sequence[Report | DialogCheckpoint]) -> tuple[str, list[Report], CheckpointPlan]:
        self.batches += 1
        token = f"{self.writer}:{self.batches}"
        reports = [item for item in batch if not isinstance(item, DialogCheckpoint)]
        # planned once: every try sends the same commands, and they count as written once applied
        return token, reports, self.checkpoints.plan(batch)

    async def _until_applied(self, batch: Sequence[Report | DialogCheckpoint], token: str, reports: list[Report],
                             plan: CheckpointPlan, *, written: bool = False) -> None:
        """Try until Redis took the batch; `written`: its first try is already sent (`start`), and
        is only read back."""
        delay = RETRY_FIRST_S
        failed = False
        while True:
            try:
                if failed and await already_landed(self.redis, self.marker, token):
                    self.landed_on_retry += 1
                    log.info("edge.publish_landed", batch=self.batches, size=len(batch))
                    break
                if written:
                    written = False
                    assert self.one_send is not None
                    await self.one_send.finish()
                else:
                    await self._send(reports, plan, token, len(batch))
                break
            except (ConnectionError, OSError, aioredis.RedisError) as exc:
                failed = True
                self._failed(exc, len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        self.checkpoints.writer.applied(plan)

    def _failed(self, exc: BaseException, size: int) -> None:
        self.checkpoints.writer.failed()
        log.warning("edge.publish_failed", error=repr(exc), pending=size)

    def _commands(self, reports: Sequence[Report], plan: CheckpointPlan, token: str) -> list[tuple[Any, ...]]:
        """The one-send batch: the marker first (once_marker's), the reports, the checkpoints."""
        xadd = ("XADD", self.keys.reports, "*")
        return [("SET", self.marker, token, "EX", MARKER_TTL_S),
                *((*xadd, *(x for kv in report.to_fields().items() for x in kv)) for report in reports),
                *plan.commands]

    async def _send(self, reports: Sequence[Report], plan: CheckpointPlan, token: str, size: int) -> None:
        if self.one_send is not None:
            await self.one_send.execute(self._commands(reports, plan, token))
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            # first: the slot of a cluster transaction is the slot of its first key (the tenant's)
            once_marker(pipe, self.marker, token)
            for report in reports:
                pipe.xadd(self.keys.reports, report.to_fields())  # type: ignore[arg-type]
            for command in plan.commands:
                pipe.execute_command(*command)
            wait_after(pipe, self.wait)
            await pipe.execute()
            note_wait(pipe, self.wait, WAIT_PATH, size=size)
