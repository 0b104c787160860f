"""Request/response schemas of the webhook endpoints."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.models import DeliveryStatus
from service.schemas import Schema

__all__ = [
    "MAX_SECRET_OVERLAP_SECONDS",
    "DeliveriesPublic",
    "DeliveryPublic",
    "EventType",
    "SecretRotate",
    "SecretRotated",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookPublic",
    "WebhookUpdate",
    "WebhooksPublic",
]

#: Longest overlap window of a secret rotation (7 days).
MAX_SECRET_OVERLAP_SECONDS = 7 * 24 * 3600

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


class WebhookUpdate(BaseModel):
    """The fields to change; omitted fields keep their value. Pending deliveries go to the new URL."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2000)
    events: list[EventType] | None = Field(default=None, min_length=1, description="Event types to receive")
    enabled: bool | None = Field(
        default=None,
        description="false pauses deliveries (they wait); true re-enables the endpoint and sends them at once",
    )


class SecretRotate(BaseModel):
    """How long the old secret keeps signing next to the new one."""

    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        le=MAX_SECRET_OVERLAP_SECONDS,
        description=(
            "Seconds during which deliveries carry signatures with both the old and the new secret (0: the old "
            "secret stops at once)"
        ),
    )


class WebhookPublic(Schema):
    """An endpoint (its secret is shown only at creation and rotation)."""

    id: uuid.UUID
    url: str
    events: list[str]
    enabled: bool
    failure_count: int = Field(description="Failed attempts since the last successful delivery")
    failing_since: dt.datetime | None = Field(
        description="First failed attempt since the last success (the endpoint is disabled after failing "
        "for MPQ_WEBHOOK_DISABLE_AFTER_SECONDS, 3 days by default)"
    )
    disabled_reason: str
    previous_secret_expires_at: dt.datetime | None = Field(
        description="Until then deliveries are also signed with the secret before the last rotation"
    )
    created_at: dt.datetime


class WebhookCreated(WebhookPublic):
    """The new endpoint with its signing secret (``whsec_`` + base64): store it now."""

    secret: str


class SecretRotated(WebhookPublic):
    """The endpoint with its new signing secret: store it now."""

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
