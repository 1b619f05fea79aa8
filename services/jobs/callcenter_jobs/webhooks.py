"""Webhooks: the events group `webhooks` feeds deliveries, a task POSTs each one, signed.

`pump` (beat, every `jobs_pump_interval_s`) reads new entries of `cc:{t}:events` as group
`webhooks`, writes one `webhook_deliveries` row per matching subscription (unique per subscription
and entry, so a re-read writes nothing twice), commits, acknowledges the entries, then queues
every pending delivery (new ones and those the api put back for a replay), and again every delivery
left `queued` and untouched for `webhook_requeue_s` (its task was lost: a worker SIGKILLed while it
held the task reserved; the Redis broker gives such a task back only after its visibility timeout, an
hour). `deliver` POSTs one:

    X-Callcenter-Delivery:  the delivery id (the same on every attempt: receivers deduplicate on it)
    X-Callcenter-Timestamp: unix seconds of this attempt
    X-Callcenter-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

A receiver recomputes the HMAC and refuses a timestamp more than a few minutes old (replay-safe).
A non-2xx answer or a network error is retried after webhook_backoff_s * 2^(n-1), times 0.5..1
(jitter), up to webhook_max_attempts in all; then the delivery is `dead` (visible and replayable
through /v1/webhooks/deliveries).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from redis.exceptions import ResponseError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from callcenter.contract.codec import DecodeError, decode
from callcenter.db.jobs import WebhookDelivery, WebhookSubscription
from callcenter.redis import text
from callcenter_jobs.app import app
from callcenter_jobs.runtime import runtime

log = structlog.get_logger(__name__)

GROUP = "webhooks"
BATCH = 500
PUMP_LOCK_MS = 30_000


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Callcenter-Signature value of `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def _matches(subscription: WebhookSubscription, event_type: str) -> bool:
    types = {t.strip() for t in subscription.event_types.split(",") if t.strip()}
    return "*" in types or event_type in types


def _read(consumer: str) -> list[tuple[str, dict[Any, Any]]]:
    rt = runtime()
    stream = rt.keys.events
    try:
        rt.redis.xgroup_create(stream, GROUP, id="$", mkstream=True)  # webhooks start from now
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    out: list[tuple[str, dict[Any, Any]]] = []
    for start in ("0", ">"):  # first what a dead pump left pending, then new entries
        resp: Any = rt.redis.xreadgroup(GROUP, consumer, {stream: start}, count=BATCH)
        for _stream, entries in resp or []:
            out.extend((text(eid), fields) for eid, fields in entries)
    return out


@app.task(name="callcenter_jobs.webhooks.pump")
def pump() -> int:
    """Events -> deliveries -> queued tasks. One pump at a time (a lock); the number queued."""
    rt = runtime()
    lock = rt.settings.jobs_key_prefix + "lock:pump"
    if not rt.redis.set(lock, "1", nx=True, px=PUMP_LOCK_MS):
        return 0
    try:
        entries = _read("pump")
        with rt.sessions() as session:
            subscriptions = list(session.scalars(select(WebhookSubscription)))
        for eid, fields in entries:
            try:
                entry = decode(fields, eid)
            except DecodeError:
                continue  # the cdr-writer dead-letters what it cannot read; a webhook has nothing to send
            body = json.dumps({"event_id": eid, "type": entry.type, "v": entry.v, "data": entry.data},
                              separators=(",", ":"), default=str)
            for sub in subscriptions:
                if _matches(sub, entry.type):
                    _record(sub.id, eid, entry.type, body)
        if entries:
            rt.redis.xack(rt.keys.events, GROUP, *[eid for eid, _ in entries])
        return _queue_pending()
    finally:
        rt.redis.delete(lock)


def _record(subscription_id: str, eid: str, etype: str, body: str) -> None:
    now = datetime.now(UTC)
    with runtime().sessions() as session:
        session.add(WebhookDelivery(id=uuid.uuid4().hex, subscription_id=subscription_id, event_id=eid,
                                    event_type=etype, payload=body, status="pending", attempts=0,
                                    created_at=now, updated_at=now))
        try:
            session.commit()
        except IntegrityError:  # recorded by an earlier pump that died before its ack
            session.rollback()


def _queue_pending() -> int:
    rt = runtime()
    with rt.sessions() as session:
        ids = list(session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.status == "pending")))
        queued = 0
        for delivery_id in ids:
            done = session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                                 WebhookDelivery.status == "pending")
                                   .values(status="queued"))
            session.commit()
            if done.rowcount:  # type: ignore[attr-defined]
                deliver.delay(delivery_id)
                queued += 1
        # queued long ago and untouched since: the task was lost with its worker; queue it again
        # (touched here, so once per webhook_requeue_s; a late twin finds it delivered and stops)
        stale_before = datetime.now(UTC) - timedelta(seconds=rt.settings.webhook_requeue_s)
        stale = list(session.scalars(select(WebhookDelivery.id).where(
            WebhookDelivery.status == "queued", WebhookDelivery.updated_at < stale_before)))
        for delivery_id in stale:
            done = session.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.status == "queued",
                WebhookDelivery.updated_at < stale_before).values(updated_at=datetime.now(UTC)))
            session.commit()
            if done.rowcount:  # type: ignore[attr-defined]
                log.warning("webhook.requeued", delivery_id=delivery_id)
                deliver.delay(delivery_id)
                queued += 1
    return queued


def backoff_s(attempt: int, base_s: float) -> float:
    """The wait after failed attempt `attempt` (1-based): exponential, with jitter in [50 %, 100 %]."""
    return float(base_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))


@app.task(name="callcenter_jobs.webhooks.deliver", bind=True, max_retries=None)
def deliver(self: Any, delivery_id: str) -> str:
    """POST one delivery; retried with back-off; `dead` after the last attempt. Its final state."""
    rt = runtime()
    with rt.sessions() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status not in ("queued",):
            return delivery.status if delivery is not None else "gone"
        sub = session.get(WebhookSubscription, delivery.subscription_id)
        if sub is None:
            delivery.status, delivery.last_error = "dead", "subscription deleted"
            session.commit()
            return "dead"
        body = delivery.payload.encode()
        ts = int(time.time())
        error: str | None = None
        try:
            resp = rt.http.post(sub.url, content=body, headers={
                "Content-Type": "application/json", "X-Callcenter-Delivery": delivery.id,
                "X-Callcenter-Timestamp": str(ts), "X-Callcenter-Signature": signature(sub.secret, ts, body)})
            if not 200 <= resp.status_code < 300:
                error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        delivery.attempts += 1
        delivery.updated_at = datetime.now(UTC)
        delivery.last_error = error
        if error is None:
            delivery.status = "delivered"
        elif delivery.attempts >= rt.settings.webhook_max_attempts:
            delivery.status = "dead"
            log.warning("webhook.dead", delivery_id=delivery.id, attempts=delivery.attempts, error=error)
        session.commit()
        if delivery.status == "queued":
            raise self.retry(countdown=backoff_s(delivery.attempts, rt.settings.webhook_backoff_s))
        return delivery.status
