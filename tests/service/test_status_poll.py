"""The status poll's fast read path (``GET /v1/jobs/{id}``): the same body as the ORM-loaded job, 404 across
tenants, auth from the key cache, and the start-up objects frozen out of the garbage collector's reach."""

from __future__ import annotations

import datetime as dt
import gc
import json

from sqlalchemy import select

from service.db import utcnow
from service.job.repository import JobRepository
from service.job.schemas import JobPublic
from service.models import Job, JobStatus, StageStatus, Tenant

from .conftest import error_of


def _running_job(client, tenant_name: str) -> Job:
    now = utcnow()
    with client.app.state.session_factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
        job = Job(
            tenant_id=tenant_id,
            spec={"model": {"name": "builtin:vit-digits"}, "method": {"budgets": {"wbits": 4.5}}},
            status=JobStatus.RUNNING,
            name="poll me",
            progress=0.375,
            stage="sensitivity",
            message="scoring layer 3 of 12",
            warnings=[{"code": "calibration_images_capped", "message": "64 of 256"}],
            attempts=1,
            started_at=now - dt.timedelta(seconds=30),
            heartbeat_at=now,
        )
        JobRepository(session).add(job)
        load = next(stage for stage in job.stages if stage.name == "load")
        load.status, load.started_at, load.finished_at = StageStatus.FINISHED, now - dt.timedelta(seconds=29), now
        load.output = {"model": "builtin:vit-digits", "input_shape": [1, 3, 32, 32], "seconds": 1.25}
        sensitivity = next(stage for stage in job.stages if stage.name == "sensitivity")
        sensitivity.status, sensitivity.started_at = StageStatus.RUNNING, now
        session.commit()
        return job


def test_the_poll_body_is_the_orm_jobs_body(client, tenant) -> None:
    job = _running_job(client, tenant.name)
    response = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    with client.app.state.session_factory() as session:
        expected = JobPublic.model_validate(JobRepository(session).get(job.tenant_id, job.id)).model_dump(
            mode="json"
        )
    body = response.json()
    assert body == expected
    assert body["progress"] == 0.375 and body["stage"] == "sensitivity" and body["status"] == "running"
    stages = {stage["name"]: stage for stage in body["stages"]}
    assert [stage["name"] for stage in body["stages"]][:4] == ["load", "synthesize", "calibrate", "sensitivity"]
    assert stages["load"]["output"]["seconds"] == 1.25 and stages["sensitivity"]["status"] == "running"
    assert body["started_at"].endswith("Z") or body["started_at"].endswith("+00:00")
    assert json.loads(response.content) == body


def test_unknown_and_foreign_jobs_are_404(client, tenant, make_tenant) -> None:
    job = _running_job(client, tenant.name)
    other = make_tenant("other")
    for headers, job_id in ((other.headers, job.id), (tenant.headers, "00000000-0000-4000-8000-000000000000")):
        response = client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 404 and error_of(response)["code"] == "job_not_found"
    response = client.get(f"/v1/jobs/{job.id}", headers={"Authorization": "Bearer mpq_not-a-key"})
    assert response.status_code == 401 and error_of(response)["code"] == "unauthorized"
    response = client.get(f"/v1/jobs/{job.id}", headers={"Authorization": "Basic abc"})
    assert response.status_code == 401 and "Bearer" in error_of(response)["message"]


def test_start_up_objects_are_frozen_out_of_the_collector(client) -> None:
    # torch, timm and the solver are imported at start-up; a full collection scanning them took 150-400 ms
    assert gc.get_freeze_count() > 100_000
