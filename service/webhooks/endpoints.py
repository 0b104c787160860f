"""HTTP routes of webhook endpoints under ``/v1/webhooks`` (the use cases live in :mod:`service.webhooks.service`)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from service.auth.dependencies import TenantDep
from service.deps import SessionDep, SettingsDep
from service.idempotency import IdempotencyKeyDep, run_idempotent
from service.models import DeliveryStatus, WebhookDelivery
from service.schemas import error_responses
from service.webhooks.delivery import message_id
from service.webhooks.schemas import (
    DeliveriesPublic,
    DeliveryPublic,
    SecretRotate,
    SecretRotated,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
    WebhooksPublic,
    WebhookUpdate,
)
from service.webhooks.service import WebhookService

__all__ = ["router"]

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


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
    body: WebhookCreate,
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """Register an endpoint; the response holds its signing ``secret`` (shown only now).

    Only http(s) URLs on public addresses are accepted unless the operator sets ``MPQ_WEBHOOK_ALLOW_PRIVATE``.
    """

    def handler() -> tuple[int, WebhookCreated]:
        endpoint = WebhookService(session, settings).create(tenant.id, body)
        return status.HTTP_201_CREATED, WebhookCreated.model_validate(endpoint)

    return run_idempotent(request, tenant, idempotency_key, body.model_dump(mode="json"), handler)


@router.get("", response_model=WebhooksPublic, responses=error_responses())
def list_webhooks(tenant: TenantDep, session: SessionDep, settings: SettingsDep) -> WebhooksPublic:
    """The caller's endpoints (without secrets)."""
    rows = WebhookService(session, settings).repository.list_endpoints(tenant.id)
    return WebhooksPublic(data=[WebhookPublic.model_validate(row) for row in rows])


@router.get("/{endpoint_id}", response_model=WebhookPublic, responses=error_responses(404))
def get_webhook(
    endpoint_id: uuid.UUID, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> WebhookPublic:
    """One endpoint: its state, how long it has been failing, and why it was disabled."""
    return WebhookPublic.model_validate(WebhookService(session, settings).get(tenant.id, endpoint_id))


@router.patch("/{endpoint_id}", response_model=WebhookPublic, responses=error_responses(404))
def update_webhook(
    endpoint_id: uuid.UUID, body: WebhookUpdate, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> WebhookPublic:
    """Change ``url``, ``events`` and/or ``enabled`` in place: the id, the secret and the pending deliveries stay
    (they go to the new URL). ``enabled=false`` pauses deliveries; ``enabled=true`` sends them at once."""
    endpoint = WebhookService(session, settings).update(tenant.id, endpoint_id, body)
    return WebhookPublic.model_validate(endpoint)


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def delete_webhook(
    endpoint_id: uuid.UUID, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Remove an endpoint and its pending deliveries (to change it without losing them, use PATCH)."""
    WebhookService(session, settings).delete(tenant.id, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{endpoint_id}/enable", response_model=WebhookPublic, responses=error_responses(404))
def enable_webhook(
    endpoint_id: uuid.UUID, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> WebhookPublic:
    """Re-enable an endpoint disabled after failing too long (or paused); its pending deliveries are sent at once."""
    return WebhookPublic.model_validate(WebhookService(session, settings).enable(tenant.id, endpoint_id))


@router.post("/{endpoint_id}/rotate-secret", response_model=SecretRotated, responses=error_responses(404))
def rotate_secret(
    endpoint_id: uuid.UUID,
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    body: SecretRotate | None = None,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """A new signing secret (returned only now). For ``overlap_seconds`` (default 24 h) every delivery carries two
    signatures, ``v1,<new> v1,<old>``, so receivers can switch to the new secret at their own pace.

    Send an ``Idempotency-Key`` to retry safely: a second rotation would end the first one's overlap window.
    """
    body = body or SecretRotate()

    def handler() -> tuple[int, SecretRotated]:
        endpoint = WebhookService(session, settings).rotate_secret(tenant.id, endpoint_id, body.overlap_seconds)
        return status.HTTP_200_OK, SecretRotated.model_validate(endpoint)

    return run_idempotent(request, tenant, idempotency_key, body.model_dump(mode="json"), handler)


@router.get("/{endpoint_id}/deliveries", response_model=DeliveriesPublic, responses=error_responses(404))
def list_deliveries(
    endpoint_id: uuid.UUID,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> DeliveriesPublic:
    """Deliveries of an endpoint, newest first: attempts, last status code and error, next retry time."""
    page = WebhookService(session, settings).deliveries(tenant.id, endpoint_id, limit=limit, after=after)
    return DeliveriesPublic(
        data=[_delivery(row) for row in page.rows], has_more=page.has_more, next_cursor=page.next_cursor
    )


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryPublic,
    responses=error_responses(404),
)
def retry_delivery(
    endpoint_id: uuid.UUID,
    delivery_id: uuid.UUID,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
) -> DeliveryPublic:
    """Send a delivery again with the same ``webhook-id`` (receivers deduplicate on it): now, or as soon as the
    endpoint is enabled. A failed delivery gets one more attempt."""
    return _delivery(WebhookService(session, settings).retry(tenant.id, endpoint_id, delivery_id))
