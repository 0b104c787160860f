"""Idempotency-Key (IETF draft) on POST /v1/jobs, /v1/jobs/{id}/reallocate and /v1/artifacts, on SQLite and
PostgreSQL: replay, reuse with another body (422), in flight (409), expiry, and concurrent submits (one job)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sqlalchemy import func, select, update

from service.idempotency.guard import fingerprint
from service.idempotency.store import IdempotencyStore
from service.job.repository import JobRepository
from service.job.schemas import JobCreate
from service.models import Artifact, IdempotencyRecord, Job, JobStatus, StageStatus, Tenant

from .conftest import error_of
from .helpers import images_bytes, upload

SPEC: dict[str, Any] = {
    "model": {"name": "builtin:vit-digits"},
    "method": {"quantizer": "minmax", "wbits": 8, "abits": 8},
    "device": "cpu",
}


def _jobs_of(client, tenant_name: str) -> int:
    with client.app.state.session_factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
        return session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) or 0


def test_same_key_same_body_replays_the_first_response(client, tenant) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "job-123"}
    first = client.post("/v1/jobs", headers=headers, json={**SPEC, "name": "a"})
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = client.post("/v1/jobs", headers=headers, json={**SPEC, "name": "a"})
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert _jobs_of(client, tenant.name) == 1
    # the structured-field form of the same key ("...") is the same key
    quoted = client.post(
        "/v1/jobs", headers={**tenant.headers, "Idempotency-Key": '"job-123"'}, json={**SPEC, "name": "a"}
    )
    assert quoted.json()["id"] == first.json()["id"]
    # without a key every submit is a new job
    assert client.post("/v1/jobs", headers=tenant.headers, json=SPEC).status_code == 202
    assert _jobs_of(client, tenant.name) == 2


def test_same_key_other_body_is_422_and_keys_are_per_tenant(client, make_tenant) -> None:
    alice, bob = make_tenant("alice"), make_tenant("bob")
    key = {"Idempotency-Key": "shared-key"}
    assert client.post("/v1/jobs", headers={**alice.headers, **key}, json=SPEC).status_code == 202
    response = client.post("/v1/jobs", headers={**alice.headers, **key}, json={**SPEC, "name": "other"})
    assert response.status_code == 422
    assert error_of(response)["code"] == "idempotency_key_reused"
    # the same key string of another tenant is another key
    response = client.post("/v1/jobs", headers={**bob.headers, **key}, json={**SPEC, "name": "other"})
    assert response.status_code == 202
    assert _jobs_of(client, alice.name) == 1 and _jobs_of(client, bob.name) == 1


def test_request_in_flight_is_409_and_expired_keys_are_forgotten(client, tenant) -> None:
    with client.app.state.session_factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant.name))
    store = IdempotencyStore(client.app.state.session_factory, ttl=3600)
    body = JobCreate.model_validate(SPEC).model_dump(mode="json")  # what the route fingerprints
    assert store.begin(tenant_id, "busy", fingerprint("POST", "/v1/jobs", body)) is None  # claimed, running
    response = client.post("/v1/jobs", headers={**tenant.headers, "Idempotency-Key": "busy"}, json=SPEC)
    assert response.status_code == 409
    assert error_of(response)["code"] == "idempotency_request_in_progress"
    assert response.headers["Retry-After"] == "1"  # when to try again (RFC 9110)
    assert _jobs_of(client, tenant.name) == 0
    # once the key has expired (24 h by default) it is free again, even for another body
    with client.app.state.session_factory() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "busy")
            .values(expires_at=IdempotencyRecord.created_at)
        )
        session.commit()
    response = client.post(
        "/v1/jobs", headers={**tenant.headers, "Idempotency-Key": "busy"}, json={**SPEC, "name": "later"}
    )
    assert response.status_code == 202 and response.json()["name"] == "later"


def test_failed_request_releases_the_key(client, tenant) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "fix-and-retry"}
    bad = {**SPEC, "data": {"artifact_id": str(uuid.uuid4())}}
    assert client.post("/v1/jobs", headers=headers, json=bad).status_code == 404
    assert client.post("/v1/jobs", headers=headers, json=SPEC).status_code == 202


def test_concurrent_submits_with_one_key_create_one_job(client, tenant) -> None:
    headers = {**tenant.headers, "Idempotency-Key": f"race-{uuid.uuid4()}"}
    barrier = threading.Barrier(6)
    responses: list[Any] = []
    lock = threading.Lock()

    def submit() -> None:
        barrier.wait()
        response = client.post("/v1/jobs", headers=headers, json=SPEC)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(response.status_code for response in responses)
    assert set(codes) <= {202, 409}, codes
    accepted = {response.json()["id"] for response in responses if response.status_code == 202}
    assert len(accepted) == 1
    assert _jobs_of(client, tenant.name) == 1
    for response in responses:
        if response.status_code == 409:
            assert error_of(response)["code"] == "idempotency_request_in_progress"
            assert response.headers["Retry-After"] == "1"


def test_reallocate_and_upload_are_idempotent(client, tenant) -> None:
    with client.app.state.session_factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant.name))
        parent = Job(tenant_id=tenant_id, spec=SPEC, status=JobStatus.SUCCEEDED)
        repository = JobRepository(session)
        repository.add(parent)
        repository.set_stage(parent.id, "sensitivity", status=StageStatus.FINISHED, output={"table": {}})
        session.commit()
        parent_id = parent.id
    headers = {**tenant.headers, "Idempotency-Key": "realloc-1"}
    body = {"budgets": {"wbits": 6}}
    first = client.post(f"/v1/jobs/{parent_id}/reallocate", headers=headers, json=body)
    assert first.status_code == 202, first.text
    again = client.post(f"/v1/jobs/{parent_id}/reallocate", headers=headers, json=body)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert _jobs_of(client, tenant.name) == 2
    other = client.post(f"/v1/jobs/{parent_id}/reallocate", headers=headers, json={"budgets": {"wbits": 5}})
    assert other.status_code == 422 and error_of(other)["code"] == "idempotency_key_reused"

    key = {"Idempotency-Key": "upload-1"}
    payload = images_bytes(n=2, size=8)
    first = upload(client, {**tenant.headers, **key}, payload)
    assert first.status_code == 201, first.text
    again = upload(client, {**tenant.headers, **key}, payload)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = upload(client, {**tenant.headers, **key}, images_bytes(n=2, size=8, seed=1))
    assert other.status_code == 422 and error_of(other)["code"] == "idempotency_key_reused"
    with client.app.state.session_factory() as session:
        count = session.scalar(
            select(func.count()).select_from(Artifact).where(Artifact.tenant_id == tenant_id)
        )
    assert count == 1


def test_key_longer_than_255_is_rejected(client, tenant) -> None:
    response = client.post("/v1/jobs", headers={**tenant.headers, "Idempotency-Key": "k" * 256}, json=SPEC)
    assert response.status_code == 422
    assert "Idempotency-Key" in error_of(response)["message"]
