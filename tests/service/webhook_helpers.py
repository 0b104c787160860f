"""Builders shared by the webhook tests: register an endpoint, make jobs, add events, read deliveries."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.job.repository import JobRepository
from service.models import DeliveryStatus, Job, JobStatus, Tenant, WebhookDelivery
from service.webhooks.outbox import enqueue_event

__all__ = ["add_events", "count_deliveries", "make_job", "register", "tenant_id_of"]


def tenant_id_of(client: TestClient, tenant_name: str) -> uuid.UUID:
    with client.app.state.session_factory() as session:
        return session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))


def make_job(client: TestClient, tenant_name: str, status: JobStatus = JobStatus.QUEUED) -> uuid.UUID:
    """A job row of the tenant (no worker runs it)."""
    with client.app.state.session_factory() as session:
        job = Job(tenant_id=tenant_id_of(client, tenant_name), spec={}, status=status, name="nightly")
        JobRepository(session).add(job)
        session.commit()
        return job.id


def register(client: TestClient, tenant: Any, url: str, events: list[str] | None = None) -> dict[str, Any]:
    """``POST /v1/webhooks``; returns the created endpoint (with its secret)."""
    body = {"url": url, **({"events": events} if events else {})}
    response = client.post("/v1/webhooks", headers=tenant.headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def add_events(client: TestClient, tenant_name: str, event_type: str, items: list[dict[str, Any]]) -> int:
    """Write one outbox event per item, as a worker does with a status change; returns the deliveries added."""
    tenant_id = tenant_id_of(client, tenant_name)
    with client.app.state.session_factory() as session:
        added = sum(enqueue_event(session, tenant_id, event_type, data) for data in items)
        session.commit()
    return added


def count_deliveries(client: TestClient, endpoint_id: str, status: DeliveryStatus) -> int:
    with client.app.state.session_factory() as session:
        return session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == uuid.UUID(endpoint_id), WebhookDelivery.status == status)
        )
