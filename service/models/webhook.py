"""Webhook endpoints of tenants and their deliveries (the outbox: one row per event and endpoint).

A delivery row is written in the same transaction as the job status change that caused it, so an event is
never lost and never sent for a change that was rolled back; the delivery worker then POSTs it until the
receiver answers 2xx (at least once, same ``webhook-id`` on every retry).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, JSONType, UTCDateTime, utcnow
from service.models._types import str_enum

__all__ = ["DeliveryStatus", "WebhookDelivery", "WebhookEndpoint"]


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SUCCEEDED = "succeeded"  # the receiver answered 2xx
    FAILED = "failed"  # gave up after the last retry


class WebhookEndpoint(Base):
    """A URL of a tenant that receives signed job events."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    #: Event types sent to this endpoint (``job.succeeded``, ...).
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)
    #: ``whsec_`` + base64 of the signing key (Standard Webhooks).
    secret: Mapped[str] = mapped_column(String(100))
    #: The secret before the last rotation: deliveries carry its signature too until ``previous_secret_expires_at``.
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Consecutive failed attempts since the last success (shown to the tenant; not what disables the endpoint).
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Time of the first failed attempt since the last success (None while the endpoint works). The endpoint is
    #: disabled once it has been failing for ``MPQ_WEBHOOK_DISABLE_AFTER_SECONDS``: a period, not a count, so a
    #: short outage during a burst of events never disables it.
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    disabled_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: the signed message and its delivery attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    event_type: Mapped[str] = mapped_column(String(64))
    #: The JSON body ``{"type", "timestamp", "data"}`` (signed as serialized at each attempt).
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[DeliveryStatus] = mapped_column(str_enum(DeliveryStatus), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: A sender holds the row until this time (compare-and-set claim; several API processes may send).
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
