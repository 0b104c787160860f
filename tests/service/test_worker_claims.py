"""The job row as source of truth: atomic claims, lease-fenced writes, recovery of orphaned jobs."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import uuid

import pytest
from sqlalchemy import select, update

from service.auth.service import create_key
from service.job.repository import JobRepository
from service.models import Job, JobStage, JobStatus, StageStatus, Tenant
from service.worker.recovery import MAX_ATTEMPTS, recover_dead_local_workers, recover_stale_jobs
from service.worker.store import DBStageStore, LeaseLost


@pytest.fixture
def factory(client):
    return client.app.state.session_factory


@pytest.fixture
def job_id(factory) -> uuid.UUID:
    """A queued job row (inserted through the repository, as the service does after validation)."""
    with factory() as session:
        created = create_key(session, f"claims-{uuid.uuid4().hex[:8]}")
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == created.tenant))
        job = Job(
            tenant_id=tenant_id, spec={"model": {"name": "builtin:vit-digits"}}, status=JobStatus.QUEUED
        )
        JobRepository(session).add(job)
        session.commit()
        return job.id


def _claim(factory, job_id, worker: str, lease: str) -> bool:
    with factory() as session:
        won = JobRepository(session).claim(job_id, worker_id=worker, lease_id=lease)
        session.commit()
        return won


def test_only_one_of_many_concurrent_claims_wins(factory, job_id) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contender(index: int) -> None:
        barrier.wait()
        results.append(_claim(factory, job_id, f"w{index}", uuid.uuid4().hex))

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    with factory() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.RUNNING and job.attempts == 1


def test_writes_are_fenced_by_the_lease(factory, job_id, tmp_path) -> None:
    assert _claim(factory, job_id, "w1", "lease-1")
    store = DBStageStore(job_id, "lease-1", factory, tmp_path)
    store.save("load", {"model": "x", "seconds": 0.1})
    assert store.load("load") == {"model": "x", "seconds": 0.1}
    with factory() as session:  # the job is re-queued (e.g. after a missed heartbeat) and claimed again
        assert JobRepository(session).requeue(job_id, lease_id="lease-1", message="re-queued")
        session.commit()
    assert _claim(factory, job_id, "w2", "lease-2")
    with pytest.raises(LeaseLost):
        store.save("sensitivity", {"table": []})
    with factory() as session:
        assert not JobRepository(session).touch(job_id, "lease-1", progress=0.9)
        stage = session.get(JobStage, (job_id, "sensitivity"))
        assert stage.status == StageStatus.PENDING and stage.output is None
        # the finished stage survived the re-queue: it is the checkpoint the next run resumes from
        assert JobRepository(session).stage_output(job_id, "load") == {"model": "x", "seconds": 0.1}


def test_skipped_stage_output_is_kept_as_checkpoint(factory, job_id, tmp_path) -> None:
    assert _claim(factory, job_id, "w1", "lease-1")
    DBStageStore(job_id, "lease-1", factory, tmp_path).save(
        "sensitivity", {"skipped": True, "reason": "uniform"}
    )
    with factory() as session:
        assert session.get(JobStage, (job_id, "sensitivity")).status == StageStatus.SKIPPED
        assert JobRepository(session).stage_output(job_id, "sensitivity")["skipped"] is True


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_jobs_of_dead_local_workers_are_requeued(factory, job_id) -> None:
    worker = f"embedded:{socket.gethostname()}:{_dead_pid()}"
    assert _claim(factory, job_id, worker, "lease-dead")
    assert job_id in recover_dead_local_workers(factory, "embedded")
    with factory() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.QUEUED and job.lease_id is None
        assert "resumes" in job.message


def test_jobs_of_live_workers_are_left_alone(factory, job_id) -> None:
    import os

    assert _claim(factory, job_id, f"embedded:{socket.gethostname()}:{os.getpid()}", "lease-live")
    assert job_id not in recover_dead_local_workers(factory, "embedded")
    assert job_id not in recover_stale_jobs(factory, 60.0)
    with factory() as session:
        assert session.get(Job, job_id).status == JobStatus.RUNNING


def test_stale_heartbeat_requeues_then_fails_after_max_attempts(factory, job_id) -> None:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert _claim(factory, job_id, "celery:elsewhere:1", f"lease-{attempt}")
        with factory() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
            )
            session.commit()
        requeued = recover_stale_jobs(factory, 60.0)
        with factory() as session:
            job = session.get(Job, job_id)
            if attempt < MAX_ATTEMPTS:
                assert job_id in requeued and job.status == JobStatus.QUEUED
            else:
                assert job_id not in requeued
                assert job.status == JobStatus.FAILED
                assert job.error["code"] == "worker_lost"
