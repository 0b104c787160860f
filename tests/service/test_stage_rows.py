"""A job has one stage row per ``quant.config.STAGES`` entry, in order; migrations 0004 (``latency``), 0006
(``calibrate``) and 0007 (``synthesize``) give jobs created before those stages existed their rows (``skipped`` when
finished, ``pending`` when they may still run) and put the later stages one position down, and their downgrades undo
exactly that. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from quant.config import STAGES
from service import migrations
from service.db import make_engine, make_session_factory
from service.models import Job, JobStage, JobStatus, StageStatus, Tenant

#: The stages before revision 0004.
OLD_STAGES = ("load", "sensitivity", "allocate", "reconstruct", "evaluate", "export")
#: The stages migrations added since.
ADDED_STAGES = ("latency", "calibrate", "synthesize")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'stages.db'}"
    else:
        yield request.getfixturevalue("pg_url")


def _stages(factory, job_id: uuid.UUID) -> list[tuple[str, int, str]]:
    with factory() as session:
        rows = session.scalars(select(JobStage).where(JobStage.job_id == job_id).order_by(JobStage.position))
        return [(row.name, row.position, row.status.value) for row in rows]


def test_new_jobs_get_a_row_per_stage_in_order(client, tenant) -> None:
    spec = {
        "model": {"name": "builtin:vit-digits"},
        "method": {"quantizer": "minmax", "wbits": 8, "abits": 8},
    }
    job = client.post("/v1/jobs", headers=tenant.headers, json=spec).json()
    assert "latency" in STAGES and STAGES.index("latency") == STAGES.index("sensitivity") + 1
    assert STAGES.index("synthesize") == STAGES.index("load") + 1
    assert STAGES.index("calibrate") == STAGES.index("synthesize") + 1
    assert [stage["name"] for stage in job["stages"]] == list(STAGES)
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)


def test_migrations_add_the_new_stages_to_existing_jobs(database_url: str) -> None:
    migrations.upgrade(database_url, "0003_hardening")
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    try:
        jobs: dict[JobStatus, uuid.UUID] = {}
        with factory() as session:
            tenant = Tenant(name=f"old-{uuid.uuid4().hex[:6]}")
            session.add(tenant)
            session.flush()
            for status in (JobStatus.SUCCEEDED, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED):
                job = Job(tenant_id=tenant.id, status=status, spec={}, message="")
                done = status == JobStatus.SUCCEEDED
                for position, name in enumerate(OLD_STAGES):
                    stage_status = StageStatus.FINISHED if done else StageStatus.PENDING
                    job.stages.append(
                        JobStage(name=name, position=position, status=stage_status, output={"n": name})
                    )
                session.add(job)
                session.flush()
                jobs[status] = job.id
            session.commit()
        before = {status: _stages(factory, job_id) for status, job_id in jobs.items()}

        migrations.upgrade(database_url)
        for status, job_id in jobs.items():
            rows = _stages(factory, job_id)
            assert [name for name, _, _ in rows] == list(STAGES)
            assert [position for _, position, _ in rows] == list(range(len(STAGES)))
            states = {name: state for name, _, state in rows}
            for added in ADDED_STAGES:
                assert states[added] == ("pending" if status in (JobStatus.QUEUED, JobStatus.RUNNING) else "skipped")
            old = {name: state for name, _, state in before[status]}
            assert {name: state for name, state in states.items() if name not in ADDED_STAGES} == old

        migrations.downgrade(database_url, "0003_hardening")
        for status, job_id in jobs.items():
            assert _stages(factory, job_id) == before[status]
    finally:
        engine.dispose()
