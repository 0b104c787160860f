"""The outbox: job events become delivery rows in the caller's transaction (committed with the status change).

Nothing is sent here; :mod:`service.webhooks.delivery` sends what is committed.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import utcnow
from service.models import WebhookDelivery, WebhookEndpoint

__all__ = ["EVENT_TYPES", "enqueue_event"]

#: Event types a tenant can subscribe to.
EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled", "job.stage_completed")


def enqueue_event(session: Session, tenant_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> int:
    """Add one delivery per endpoint of the tenant subscribed to ``event_type``; returns how many.

    Disabled endpoints get their deliveries too: they are sent once the tenant re-enables the endpoint.
    """
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)).all()
    now = utcnow()
    count = 0
    for endpoint in endpoints:
        if event_type not in (endpoint.events or []):
            continue
        payload = {"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data}
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id, event_type=event_type, payload=payload, next_attempt_at=now
            )
        )
        count += 1
    return count
