"""Request/response schemas of the webhook endpoints."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.kit.schemas import Schema
from service.models import DeliveryStatus

__all__ = [
    "DeliveriesPublic",
    "DeliveryPublic",
    "EventType",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookPublic",
    "WebhooksPublic",
]

EventType = Literal["job.succeeded", "job.failed", "job.cancelled", "job.stage_completed"]


class WebhookCreate(BaseModel):
    """A URL to POST signed job events to."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, examples=["https://ci.example.com/hooks/mpq"])
    events: list[EventType] = Field(
        default_factory=lambda: ["job.succeeded", "job.failed", "job.cancelled"],
        min_length=1,
        description="Event types to receive",
    )


class WebhookPublic(Schema):
    """An endpoint (its secret is shown only once, at creation)."""

    id: uuid.UUID
    url: str
    events: list[str]
    enabled: bool
    failure_count: int
    disabled_reason: str
    created_at: dt.datetime


class WebhookCreated(WebhookPublic):
    """The new endpoint with its signing secret (``whsec_`` + base64): store it now."""

    secret: str


class WebhooksPublic(BaseModel):
    data: list[WebhookPublic]


class DeliveryPublic(Schema):
    """One event sent (or to be sent) to an endpoint."""

    id: uuid.UUID
    webhook_id: str = Field(description="The webhook-id header of every attempt")
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str
    next_attempt_at: dt.datetime | None = Field(description="When the next retry is due (pending only)")
    created_at: dt.datetime
    delivered_at: dt.datetime | None


class DeliveriesPublic(BaseModel):
    """A page of deliveries, newest first."""

    data: list[DeliveryPublic]
    has_more: bool
    next_cursor: str | None
