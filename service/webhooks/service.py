"""Webhook use cases of a tenant: register, change, pause/enable, rotate the secret, resend a delivery, delete.

Every change keeps the endpoint's id and its outbox: pending deliveries survive a URL change, a secret rotation
and a pause, so nobody needs to delete and re-create an endpoint (which drops what it had not received yet).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy.orm import Session

from service.db import utcnow
from service.errors import NotFound
from service.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from service.pagination import Page
from service.settings import Settings
from service.webhooks.repository import WebhookRepository
from service.webhooks.schemas import WebhookCreate, WebhookUpdate
from service.webhooks.signing import new_secret
from service.webhooks.urls import check_webhook_url

__all__ = ["WebhookService"]


class WebhookService:
    """Everything a tenant can do with its webhook endpoints (each method commits)."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.repository = WebhookRepository(session)

    def get(self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        """The tenant's endpoint; 404 ``webhook_not_found`` for unknown ids and other tenants' endpoints."""
        endpoint = self.repository.get_endpoint(tenant_id, endpoint_id)
        if endpoint is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found", code="webhook_not_found")
        return endpoint

    def create(self, tenant_id: uuid.UUID, body: WebhookCreate) -> WebhookEndpoint:
        """Register an endpoint with a fresh secret (public URLs only unless the operator allows private ones)."""
        url = check_webhook_url(body.url, allow_private=self.settings.webhook_allow_private)
        endpoint = self.repository.add_endpoint(
            WebhookEndpoint(tenant_id=tenant_id, url=url, events=sorted(set(body.events)), secret=new_secret())
        )
        self.session.commit()
        return endpoint

    def update(self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, body: WebhookUpdate) -> WebhookEndpoint:
        """Change url, events and/or enabled; pending deliveries stay and go to the new URL."""
        endpoint = self.get(tenant_id, endpoint_id)
        if body.url is not None:
            endpoint.url = check_webhook_url(body.url, allow_private=self.settings.webhook_allow_private)
        if body.events is not None:
            endpoint.events = sorted(set(body.events))
        if body.enabled is True and not endpoint.enabled:
            self._enable(endpoint)
        elif body.enabled is False and endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_reason = (
                f"paused by the tenant; PATCH /v1/webhooks/{endpoint.id} with enabled=true sends its pending "
                "deliveries"
            )
        self.session.commit()
        return endpoint

    def enable(self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        """Re-enable an endpoint; its pending deliveries are due at once."""
        endpoint = self.get(tenant_id, endpoint_id)
        self._enable(endpoint)
        self.session.commit()
        return endpoint

    def _enable(self, endpoint: WebhookEndpoint) -> None:
        endpoint.enabled, endpoint.disabled_reason = True, ""
        endpoint.failure_count, endpoint.failing_since = 0, None
        self.repository.reschedule_pending(endpoint.id, utcnow())

    def rotate_secret(
        self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, overlap_seconds: int
    ) -> WebhookEndpoint:
        """A new secret; the current one keeps signing next to it for ``overlap_seconds`` (0: stops at once)."""
        endpoint = self.get(tenant_id, endpoint_id)
        if overlap_seconds > 0:
            endpoint.previous_secret = endpoint.secret
            endpoint.previous_secret_expires_at = utcnow() + dt.timedelta(seconds=overlap_seconds)
        else:
            endpoint.previous_secret, endpoint.previous_secret_expires_at = None, None
        endpoint.secret = new_secret()
        self.session.commit()
        return endpoint

    def delete(self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
        """Remove an endpoint and its deliveries."""
        self.session.delete(self.get(tenant_id, endpoint_id))
        self.session.commit()

    def deliveries(
        self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, *, limit: int, after: str | None
    ) -> Page[WebhookDelivery]:
        """One cursor page of the endpoint's deliveries, newest first."""
        endpoint = self.get(tenant_id, endpoint_id)
        return self.repository.deliveries(endpoint.id, limit=limit, after=after)

    def retry(self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery:
        """Send a delivery again (same ``webhook-id``), now or as soon as the endpoint is enabled.

        A failed delivery gets one more attempt (failed again if that fails: resend it again later); a succeeded
        one is sent again with the retries it has left; a pending one is made due at once. A delivery being sent
        right now keeps its claim, so it is never sent twice at the same time.
        """
        endpoint = self.get(tenant_id, endpoint_id)
        delivery = self.repository.get_delivery(endpoint.id, delivery_id)
        if delivery is None:
            raise NotFound(
                f"delivery {delivery_id} of webhook endpoint {endpoint_id} not found", code="delivery_not_found"
            )
        delivery.status = DeliveryStatus.PENDING
        delivery.next_attempt_at = utcnow()
        self.session.commit()
        return delivery
