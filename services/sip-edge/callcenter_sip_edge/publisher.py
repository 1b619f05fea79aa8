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

A report that frees an agent (`store.sources.APPENDED_REPORTS`: a call's end) is appended by its
step's `appended` function rather than by XADD, when `apply_at_once` (`CC_APPLY_CALL_ENDS`) and the
batch goes in one send: the function appends it and applies it in the same atomic step, so the
agent's next call is rung (its command on this edge's stream) without a dispatcher's hop between
(issue 15). The step's own checks keep this safe: a report whose predecessors are not applied yet
comes back OUT_OF_ORDER and changes nothing, and the dispatcher, which reads every report, applies
it in its turn or finds it DUPLICATE. Should the function fail (Redis without the library: it is
loaded then), the report is appended again by XADD in a batch of its own: on the stream twice at
worst, the second a DUPLICATE. The edge does so while its process used less than
`max_cpu` of one core over the last second (`CC_APPLY_CALL_ENDS_MAX_CPU`, `CpuShare`); busier, it
leaves them to the dispatchers, whose batches cost less per call (bench/README.md: the latency where
there is CPU to spare, the capacity where there is not).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio import RedisCluster

from callcenter.contract.reports import Report
from callcenter.metrics import EDGE_APPLIED, EDGE_LEFT
from callcenter.redis_durability import (
    MARKER_TTL_S,
    ReplicaWait,
    already_landed,
    expose_wait_count,
    note_wait,
    once_marker,
    wait_after,
)
from callcenter.store.codes import RC
from callcenter.store.keys import Keys
from callcenter.store.scripts import Store, not_loaded, now_ms
from callcenter.store.sources import library
from callcenter_sip_edge.checkpoint import Checkpoints, DialogCheckpoint
from callcenter_sip_edge.checkpoint_writes import CheckpointPlan
from callcenter_sip_edge.transaction import OneSend, raise_errors

log = structlog.get_logger(__name__)

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
WAIT_PATH = "edge_publish"   # the label of its count of replicas that missed a WAIT


class CpuShare:
    """The share of one core this process used over the last complete window (1 s): the clocks are
    read once per window at most (`time.process_time` is a system call), not per batch."""

    def __init__(self, window_s: float = 1.0, *, wall: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.window_s = window_s
        self._wall = wall
        self._cpu = cpu
        self._since = (wall(), cpu())
        self.last = 0.0   # the share of the last complete window (0 before the first one ends)

    def share(self) -> float:
        wall = self._wall()
        wall_since, cpu_since = self._since
        if wall - wall_since >= self.window_s:
            cpu = self._cpu()
            self.last = (cpu - cpu_since) / (wall - wall_since)
            self._since = (wall, cpu)
        return self.last


def marker_key(keys: Keys, edge_id: str) -> str:
    """The key that holds the token of the last batch this edge applied (the tenant's slot)."""
    return keys.edge_published(edge_id)


class ReportPublisher:
    """Sends the edge's batches of reports and checkpoints, one MULTI each."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, edge_id: str, checkpoints: Checkpoints,
                 wait: ReplicaWait | None = None, *, apply_at_once: bool = False, max_cpu: float = 0.0,
                 cpu: CpuShare | None = None) -> None:
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
        # report type -> the function that appends and applies it (one send only: see the module's doc)
        self.appended = dict(library().appended) if apply_at_once and self.one_send is not None else {}
        self.applied: dict[str, int] = {}   # results of those steps, by RC name
        self.left = 0                        # such reports appended by XADD because the process was busy
        self.max_cpu = max_cpu               # 0: no limit
        self.cpu = cpu or CpuShare()
        self._library_due = False            # such a function was not found: load the library
        # the batch `start` took: (batch, token, reports, plan, its appending functions, written at
        # once), until `finish`
        self._started: tuple[Sequence[Report | DialogCheckpoint], str, list[Report], CheckpointPlan,
                             dict[str, str], bool] | None = None

    async def publish(self, batch: Sequence[Report | DialogCheckpoint]) -> None:
        """Apply `batch` once, trying until Redis takes it."""
        token, reports, plan = self._prepare(batch)
        await self._until_applied(batch, token, reports, plan, self._appending(reports))

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
        appended = self._appending(reports)
        # False: the buffer would not take it: sent by finish() through the ordinary path
        written = self.one_send.start(self._commands(reports, plan, token, appended))
        self._started = (batch, token, reports, plan, appended, written)
        return True

    def can_start(self) -> bool:
        """`start` would take a batch now (a kept connection, up, nothing started before)."""
        return self.one_send is not None and self._started is None and self.one_send.can_start()

    async def finish(self) -> None:
        """Until the batch `start` took is applied (it reads the replies, or sends it again)."""
        assert self._started is not None, "nothing was started"
        (batch, token, reports, plan, appended, written), self._started = self._started, None
        await self._until_applied(batch, token, reports, plan, appended, written=written)

    def _prepare(self, batch: Sequence[Report | DialogCheckpoint]) -> tuple[str, list[Report], CheckpointPlan]:
        self.batches += 1
        token = f"{self.writer}:{self.batches}"
        reports = [item for item in batch if not isinstance(item, DialogCheckpoint)]
        # planned once: every try sends the same commands, and they count as written once applied
        return token, reports, self.checkpoints.plan(batch)

    def _appending(self, reports: Sequence[Report]) -> dict[str, str]:
        """The appending functions for this batch's reports: none while the process is busier than
        `max_cpu` (those reports are then counted as left to the dispatchers)."""
        if not self.appended or not self.max_cpu or self.cpu.share() < self.max_cpu:
            return self.appended
        left = sum(1 for report in reports if report.TYPE in self.appended)
        if left:
            self.left += left
            EDGE_LEFT.inc(left)
        return {}

    async def _until_applied(self, batch: Sequence[Report | DialogCheckpoint], token: str, reports: list[Report],
                             plan: CheckpointPlan, appended: dict[str, str], *, written: bool = False) -> None:
        """Try until Redis took the batch; `appended`: the functions that append its reports of those
        types (every try sends the same commands); `written`: its first try is already sent
        (`start`), and is only read back."""
        delay = RETRY_FIRST_S
        failed = False
        again: list[Report] = []
        while True:
            try:
                if failed and await already_landed(self.redis, self.marker, token):
                    self.landed_on_retry += 1
                    log.info("edge.publish_landed", batch=self.batches, size=len(batch))
                    break
                reply: list[Any] | None
                if written:
                    written = False
                    assert self.one_send is not None
                    reply = await self.one_send.finish()
                else:
                    reply = await self._send(reports, plan, token, len(batch), appended)
                again = self._appended_results(reports, reply, appended)
                break
            except (ConnectionError, OSError, aioredis.RedisError) as exc:
                failed = True
                self._failed(exc, len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        self.checkpoints.writer.applied(plan)
        if again:
            await self._append_again(again)

    def _appended_results(self, reports: Sequence[Report], reply: Sequence[Any] | None,
                          appended: dict[str, str]) -> list[Report]:
        """Count the results of the batch's appending steps; raise any other command's error; the
        reports whose function failed, to be appended again."""
        if reply is None:
            return []
        at = [1 + i for i, report in enumerate(reports) if report.TYPE in appended]  # after the marker
        raise_errors(reply, but=at)
        again = []
        for i in at:
            result = reply[i]
            if isinstance(result, Exception):
                again.append(reports[i - 1])
                name = "ERROR"
                log.warning("edge.appended_step_failed", type=reports[i - 1].TYPE, error=str(result)[:300])
                if not_loaded(result):
                    self._library_due = True
            else:
                name = RC(int(result[0])).name
            self.applied[name] = self.applied.get(name, 0) + 1
            EDGE_APPLIED.labels(name).inc()
        return again

    async def _append_again(self, reports: list[Report]) -> None:
        """Append by XADD, in a batch of their own, the reports whose appending function failed;
        load the function library first when Redis did not have it (a failure to load it turns
        the appending functions off, with a warning: the dispatchers apply those reports then)."""
        if self._library_due:
            self._library_due = False
            try:
                await Store(self.redis, self.keys.tenant).load()
            except aioredis.ResponseError as exc:
                self.appended = {}
                log.warning("edge.appended_steps_off", error=str(exc)[:300])
        self.batches += 1
        # their checkpoints went with the batch that carried them: none here
        await self._until_applied(reports, f"{self.writer}:{self.batches}", reports, CheckpointPlan(), {})

    def _failed(self, exc: BaseException, size: int) -> None:
        self.checkpoints.writer.failed()
        log.warning("edge.publish_failed", error=repr(exc), pending=size)

    def _commands(self, reports: Sequence[Report], plan: CheckpointPlan, token: str,
                  appended: dict[str, str]) -> list[tuple[Any, ...]]:
        """The one-send batch: the marker first (once_marker's), the reports (those of `appended`'s
        types by their function), the checkpoints."""
        xadd = ("XADD", self.keys.reports, "*")
        now = now_ms() if appended else 0
        commands: list[tuple[Any, ...]] = [("SET", self.marker, token, "EX", MARKER_TTL_S)]
        for report in reports:
            fields = report.to_fields()
            function = appended.get(report.TYPE)
            if function is None:
                commands.append((*xadd, *(x for kv in fields.items() for x in kv)))
            else:
                commands.append(("FCALL", function, 1, self.keys.events, now,
                                 fields["type"], fields["v"], fields["data"]))
        commands += plan.commands
        return commands

    async def _send(self, reports: Sequence[Report], plan: CheckpointPlan, token: str, size: int,
                    appended: dict[str, str]) -> list[Any] | None:
        """The batch's EXEC reply when it went in one send (None through the client's pipeline)."""
        if self.one_send is not None:
            return await self.one_send.execute(self._commands(reports, plan, token, appended))
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
        return None
