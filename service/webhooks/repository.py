"""Queries on webhook endpoints and deliveries (tenant-scoped reads; compare-and-set claims for senders)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.models import DeliveryStatus, Tenant, WebhookDelivery, WebhookEndpoint
from service.pagination import Page, keyset_page

__all__ = ["WebhookRepository"]


class WebhookRepository:
    """Data access for :class:`WebhookEndpoint` and :class:`WebhookDelivery`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # ---- tenant-facing -------------------------------------------------------------------------------------
    def add_endpoint(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        self.session.add(endpoint)
        self.session.flush()
        return endpoint

    def get_endpoint(self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
        return self.session.scalar(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id
            )
        )

    def list_endpoints(self, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
        return list(
            self.session.scalars(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.tenant_id == tenant_id)
                .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
            )
        )

    def deliveries(self, endpoint_id: uuid.UUID, *, limit: int, after: str | None) -> Page[WebhookDelivery]:
        statement = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        return keyset_page(
            self.session, statement, WebhookDelivery.created_at, WebhookDelivery.id, limit=limit, after=after
        )

    def get_delivery(self, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery | None:
        """A delivery of the endpoint (None for unknown ids and other endpoints' deliveries)."""
        return self.session.scalar(
            select(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id
            )
        )

    def reschedule_pending(self, endpoint_id: uuid.UUID, when: dt.datetime) -> None:
        """Make the endpoint's pending deliveries due at ``when`` (after it is re-enabled)."""
        self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.PENDING
            )
            .values(next_attempt_at=when)
        )

    # ---- sender-facing -------------------------------------------------------------------------------------
    def due(self, now: dt.datetime, limit: int) -> Sequence[uuid.UUID]:
        """Ids of pending deliveries of enabled endpoints whose next attempt is due and that nobody holds."""
        return self.session.scalars(
            select(WebhookDelivery.id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
                WebhookEndpoint.enabled.is_(True),
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
        ).all()

    def claim(self, delivery_id: uuid.UUID, now: dt.datetime, until: dt.datetime) -> bool:
        """Hold a due delivery until ``until`` (compare-and-set); False when another sender has it."""
        result = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
            )
            .values(locked_until=until)
        )
        return result.rowcount == 1

    # ---- metrics -------------------------------------------------------------------------------------------
    def endpoint_health(self) -> list[tuple[uuid.UUID, str, bool, dt.datetime | None]]:
        """``(endpoint id, tenant name, enabled, failing_since)`` of every endpoint."""
        rows = self.session.execute(
            select(WebhookEndpoint.id, Tenant.name, WebhookEndpoint.enabled, WebhookEndpoint.failing_since).join(
                Tenant, Tenant.id == WebhookEndpoint.tenant_id
            )
        )
        return [(row[0], row[1], bool(row[2]), row[3]) for row in rows]

    def pending_backlog(self) -> dict[uuid.UUID, tuple[int, dt.datetime]]:
        """``{endpoint id: (pending deliveries, creation time of the oldest)}`` of endpoints with a backlog."""
        rows = self.session.execute(
            select(WebhookDelivery.endpoint_id, func.count(), func.min(WebhookDelivery.created_at))
            .where(WebhookDelivery.status == DeliveryStatus.PENDING)
            .group_by(WebhookDelivery.endpoint_id)
        )
        return {row[0]: (int(row[1]), row[2]) for row in rows}
