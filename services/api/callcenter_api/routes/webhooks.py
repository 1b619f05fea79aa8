"""/v1/webhooks (admin): subscriptions (URL, event types, secret) and their deliveries, made by the
celery jobs (services/jobs, `callcenter_jobs.webhooks`); a dead delivery is replayed by putting it
back to pending (the jobs' pump queues it again within a second).

Reads and writes `webhook_subscriptions` and `webhook_deliveries`. A URL that is not http(s), has
no host, or points at this api itself is refused (422, cause `webhook-url-refused`; what "itself"
covers: `callcenter_api.webhook_urls`).
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from callcenter.contract.types import TYPES
from callcenter.db.jobs import WebhookDelivery, WebhookSubscription
from callcenter_api.deps import ServicesDep
from callcenter_api.errors import problem
from callcenter_api.webhook_urls import ApiAddress, url_refusal

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

ID = r"^[0-9a-f]{32}$"
SubscriptionId = Annotated[str, Path(pattern=ID)]
DeliveryId = Annotated[str, Path(pattern=ID)]
EVENT_TYPES = sorted(n for n in TYPES if not n.startswith(("report.", "command.")))


class SubscriptionIn(BaseModel):
    """A subscription to create: where, which event types (`*` = all), and optionally its secret."""

    url: str = Field(max_length=2048)
    event_types: list[str] = Field(min_length=1, max_length=64)
    secret: str | None = Field(default=None, min_length=16, max_length=255)


class SubscriptionOut(BaseModel):
    """A subscription; `secret` is shown only in the answer to its creation."""

    id: str
    url: str
    event_types: list[str]
    created_at: datetime
    secret: str | None = None


class DeliveryOut(BaseModel):
    """One delivery of one event to one subscription."""

    id: str
    subscription_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime


def _out(sub: WebhookSubscription, secret: str | None = None) -> SubscriptionOut:
    return SubscriptionOut(id=sub.id, url=sub.url, event_types=sub.event_types.split(","),
                           created_at=sub.created_at, secret=secret)


@router.post("", name="create", status_code=status.HTTP_201_CREATED, response_model=SubscriptionOut,
             responses={422: {"description": "a URL refused, or an unknown event type"}})
async def create_subscription(body: SubscriptionIn, request: Request, services: ServicesDep
                              ) -> SubscriptionOut | Response:
    """Subscribe a URL to event types; the answer carries the signing secret (generated unless given)."""
    settings = services.settings
    why = await url_refusal(body.url, ApiAddress(settings.api_host, settings.api_port, str(request.url),
                                                 settings.api_public_url))
    if why is not None:
        return problem(422, "webhook-url-refused", f"{why}: {body.url[:200]}")
    unknown = [t for t in body.event_types if t != "*" and t not in EVENT_TYPES]
    if unknown:
        return problem(422, "validation-failed", f"unknown event types: {', '.join(unknown)[:200]}")
    secret = body.secret or secrets.token_hex(32)
    sub = WebhookSubscription(id=uuid.uuid4().hex, url=body.url, event_types=",".join(body.event_types),
                              secret=secret, created_at=datetime.now(UTC))

    def add(session: Session) -> None:
        session.add(sub)
        session.commit()

    await services.sql(add)
    return _out(sub, secret)


@router.get("", name="list")
async def list_subscriptions(services: ServicesDep) -> list[SubscriptionOut]:
    def fetch(session: Session) -> list[SubscriptionOut]:
        return [_out(s) for s in session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.created_at))]
    return await services.sql(fetch)


@router.delete("/{subscription_id}", name="delete", status_code=204, responses={404: {"description": "unknown"}})
async def delete_subscription(subscription_id: SubscriptionId, services: ServicesDep) -> None:
    def remove(session: Session) -> bool:
        sub = session.get(WebhookSubscription, subscription_id)
        if sub is None:
            return False
        session.delete(sub)
        session.commit()
        return True
    if not await services.sql(remove):
        raise HTTPException(404, f"webhook subscription {subscription_id!r} does not exist")


@router.get("/deliveries", name="list_deliveries")
async def list_deliveries(services: ServicesDep,
                          status_: Annotated[Literal["pending", "queued", "delivered", "dead"] | None,
                                             Query(alias="status")] = None,
                          subscription_id: Annotated[str | None, Query(pattern=ID)] = None,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DeliveryOut]:
    """The newest deliveries first, by state and subscription."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(limit)
    if status_ is not None:
        query = query.where(WebhookDelivery.status == status_)
    if subscription_id is not None:
        query = query.where(WebhookDelivery.subscription_id == subscription_id)

    def fetch(session: Session) -> list[DeliveryOut]:
        return [DeliveryOut.model_validate(d, from_attributes=True) for d in session.scalars(query)]
    return await services.sql(fetch)


@router.post("/deliveries/{delivery_id}/replay", name="replay_delivery", response_model=DeliveryOut,
             responses={404: {"description": "unknown"}, 409: {"description": "not dead"}})
async def replay_delivery(delivery_id: DeliveryId, services: ServicesDep) -> DeliveryOut | Response:
    """Deliver a dead delivery again, from its first attempt."""
    def replay(session: Session) -> DeliveryOut | int:
        d = session.get(WebhookDelivery, delivery_id)
        if d is None:
            return 404
        if d.status != "dead":
            return 409
        d.status, d.attempts, d.updated_at = "pending", 0, datetime.now(UTC)
        session.commit()
        return DeliveryOut.model_validate(d, from_attributes=True)
    out = await services.sql(replay)
    if out == 404:
        raise HTTPException(404, f"webhook delivery {delivery_id!r} does not exist")
    if out == 409:
        return problem(409, "invalid-state", f"webhook delivery {delivery_id!r} is not dead: only dead ones replay")
    assert isinstance(out, DeliveryOut)
    return out
