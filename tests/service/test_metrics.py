"""/metrics: stage-duration and queue-wait histograms, outcomes by error code, heartbeat age, webhook delivery
counter, process collectors, and the optional token."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service.app import create_app
from service.db import utcnow
from service.job.repository import JobRepository
from service.models import Job, JobStatus, StageStatus, Tenant


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture(scope="module")
def settings(backend_url, tmp_path_factory):
    from service.settings import Settings

    return Settings(
        database_url=backend_url,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        embedded_worker=False,
        webhook_worker=False,
    )


def test_job_series_from_the_database(client, tenant) -> None:
    now = utcnow()
    with client.app.state.session_factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant.name))
        repository = JobRepository(session)
        done = Job(
            tenant_id=tenant_id,
            spec={},
            status=JobStatus.SUCCEEDED,
            created_at=now - dt.timedelta(seconds=100),
            started_at=now - dt.timedelta(seconds=97),  # waited 3 s in the queue
        )
        failed = Job(
            tenant_id=tenant_id,
            spec={},
            status=JobStatus.FAILED,
            error={"code": "out_of_memory", "message": "x"},
            created_at=now - dt.timedelta(seconds=50),
            started_at=now - dt.timedelta(seconds=30),  # 20 s
        )
        running = Job(
            tenant_id=tenant_id,
            spec={},
            status=JobStatus.RUNNING,
            worker_id=f"embedded:test:{uuid.uuid4().hex[:6]}",
            heartbeat_at=now - dt.timedelta(seconds=42),
        )
        for job in (done, failed, running):
            repository.add(job)
        repository.set_stage(
            done.id,
            "sensitivity",
            status=StageStatus.FINISHED,
            started_at=now - dt.timedelta(seconds=90),
            finished_at=now - dt.timedelta(seconds=83),  # 7 s
        )
        session.commit()
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = _samples(response.text)
    count = samples[("mpq_stage_duration_seconds_count", (("stage", "sensitivity"),))]
    assert count >= 1
    le5 = samples[("mpq_stage_duration_seconds_bucket", (("le", "5.0"), ("stage", "sensitivity")))]
    le10 = samples[("mpq_stage_duration_seconds_bucket", (("le", "10.0"), ("stage", "sensitivity")))]
    assert le10 - le5 >= 1  # the 7 s stage falls in (5, 10]
    waits_le_25 = samples[("mpq_queue_wait_seconds_bucket", (("le", "2.5"),))]
    waits_le_5 = samples[("mpq_queue_wait_seconds_bucket", (("le", "5.0"),))]
    waits_le_30 = samples[("mpq_queue_wait_seconds_bucket", (("le", "30.0"),))]
    assert waits_le_5 - waits_le_25 >= 1 and waits_le_30 - waits_le_5 >= 1
    assert samples[("mpq_job_outcomes_total", (("code", "out_of_memory"), ("status", "failed")))] >= 1
    assert samples[("mpq_job_outcomes_total", (("code", ""), ("status", "succeeded")))] >= 1
    age = samples[("mpq_worker_heartbeat_age_seconds", (("worker", running.worker_id),))]
    assert 42 <= age < 42 + 60
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)
    assert any(name == "python_info" for name, _ in samples)
    assert any(name == "python_gc_collections_total" for name, _ in samples)


def test_webhook_outcomes_are_counted(client) -> None:
    client.app.state.metrics.webhook_outcome("retried")
    client.app.state.metrics.webhook_outcome("succeeded")
    samples = _samples(client.get("/metrics").text)
    assert samples[("mpq_webhook_deliveries_total", (("outcome", "retried"),))] >= 1
    assert samples[("mpq_webhook_deliveries_total", (("outcome", "succeeded"),))] >= 1


def test_metrics_token(settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"metrics_token": "s3cret"}))) as client:
        response = client.get("/metrics")
        assert response.status_code == 401 and response.json()["error"]["code"] == "metrics_token"
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
