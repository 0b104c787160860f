"""HTTP routes of webhook endpoints under ``/v1/webhooks``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.auth.dependencies import TenantDep
from service.deps import SessionDep, SettingsDep
from service.kit.db import utcnow
from service.kit.errors import NotFound
from service.kit.schemas import error_responses
from service.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from service.webhooks.delivery import message_id
from service.webhooks.repository import WebhookRepository
from service.webhooks.schemas import (
    DeliveriesPublic,
    DeliveryPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
    WebhooksPublic,
)
from service.webhooks.signing import new_secret
from service.webhooks.urls import check_webhook_url

__all__ = ["router"]

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _endpoint(repository: WebhookRepository, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = repository.get_endpoint(tenant_id, endpoint_id)
    if endpoint is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found", code="webhook_not_found")
    return endpoint


def _delivery(row: WebhookDelivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=row.id,
        webhook_id=message_id(row.id),
        event_type=row.event_type,
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.status == DeliveryStatus.PENDING else None,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated, responses=error_responses()
)
def create_webhook(
    body: WebhookCreate, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> WebhookCreated:
    """Register an endpoint; the response holds its signing ``secret`` (shown only now).

    Only http(s) URLs on public addresses are accepted unless the operator sets ``MPQ_WEBHOOK_ALLOW_PRIVATE``.
    """
    url = check_webhook_url(body.url, allow_private=settings.webhook_allow_private)
    endpoint = WebhookRepository(session).add_endpoint(
        WebhookEndpoint(tenant_id=tenant.id, url=url, events=sorted(set(body.events)), secret=new_secret())
    )
    session.commit()
    return WebhookCreated.model_validate(endpoint)


@router.get("", response_model=WebhooksPublic, responses=error_responses())
def list_webhooks(tenant: TenantDep, session: SessionDep) -> WebhooksPublic:
    """The caller's endpoints (without secrets)."""
    rows = WebhookRepository(session).list_endpoints(tenant.id)
    return WebhooksPublic(data=[WebhookPublic.model_validate(row) for row in rows])


@router.get("/{endpoint_id}", response_model=WebhookPublic, responses=error_responses(404))
def get_webhook(endpoint_id: uuid.UUID, tenant: TenantDep, session: SessionDep) -> WebhookPublic:
    return WebhookPublic.model_validate(_endpoint(WebhookRepository(session), tenant.id, endpoint_id))


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def delete_webhook(endpoint_id: uuid.UUID, tenant: TenantDep, session: SessionDep) -> Response:
    """Remove an endpoint and its pending deliveries."""
    endpoint = _endpoint(WebhookRepository(session), tenant.id, endpoint_id)
    session.delete(endpoint)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{endpoint_id}/enable", response_model=WebhookPublic, responses=error_responses(404))
def enable_webhook(endpoint_id: uuid.UUID, tenant: TenantDep, session: SessionDep) -> WebhookPublic:
    """Re-enable an endpoint disabled after repeated failures; its pending deliveries are sent again at once."""
    repository = WebhookRepository(session)
    endpoint = _endpoint(repository, tenant.id, endpoint_id)
    endpoint.enabled, endpoint.failure_count, endpoint.disabled_reason = True, 0, ""
    repository.reschedule_pending(endpoint.id, utcnow())
    session.commit()
    return WebhookPublic.model_validate(endpoint)


@router.get("/{endpoint_id}/deliveries", response_model=DeliveriesPublic, responses=error_responses(404))
def list_deliveries(
    endpoint_id: uuid.UUID,
    tenant: TenantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> DeliveriesPublic:
    """Deliveries of an endpoint, newest first: attempts, last status code and error, next retry time."""
    repository = WebhookRepository(session)
    endpoint = _endpoint(repository, tenant.id, endpoint_id)
    page = repository.deliveries(endpoint.id, limit=limit, after=after)
    return DeliveriesPublic(
        data=[_delivery(row) for row in page.rows], has_more=page.has_more, next_cursor=page.next_cursor
    )
