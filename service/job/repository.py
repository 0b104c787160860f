"""Queries on jobs, their stages and layers. Tenant-facing reads are always scoped to a tenant.

Worker-side writes are compare-and-set updates: a claim only succeeds on a ``queued`` row, and every later write
of a run is guarded by the run's ``lease_id`` (see :mod:`service.models.job`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, joinedload

from quant.config import STAGES
from service.db import utcnow
from service.events.recorder import record_status
from service.models import Job, JobLayer, JobStage, JobStatus, StageStatus
from service.pagination import Page, keyset_page

__all__ = ["JobRepository"]

#: Stages whose stored output makes the pipeline skip them on resume.
_DONE_STAGE = (StageStatus.FINISHED, StageStatus.REUSED, StageStatus.SKIPPED)

_JOBS, _STAGES = Job.__table__, JobStage.__table__
_JOB_BY_ID = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.tenant_id == bindparam("tenant_id"))
_STAGES_OF = (
    select(*(_STAGES.c[name] for name in ("name", "status", "started_at", "finished_at", "reused_from", "output")))
    .where(_STAGES.c.job_id == bindparam("job_id"))
    .order_by(_STAGES.c.position)
)


class JobRepository:
    """Data access for :class:`Job`, :class:`JobStage` and :class:`JobLayer`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # ---- tenant-facing -------------------------------------------------------------------------------------
    def add(self, job: Job, *, reused: dict[str, tuple[dict[str, Any], uuid.UUID]] | None = None) -> Job:
        """Insert a job with one pending row per pipeline stage (``reused`` stages carry copied output)."""
        reused = reused or {}
        self.session.add(job)
        for position, name in enumerate(STAGES):
            stage = JobStage(name=name, position=position, status=StageStatus.PENDING)
            if name in reused:
                stage.output, stage.reused_from = reused[name]
                stage.status = StageStatus.REUSED
            job.stages.append(stage)
        self.session.flush()
        return job

    def get(self, tenant_id: uuid.UUID, job_id: uuid.UUID, *, with_details: bool = True) -> Job | None:
        statement = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
        if with_details:  # one round trip: the job and its stage rows
            statement = statement.options(joinedload(Job.stages))
        return self.session.execute(statement).unique().scalar_one_or_none()

    def get_values(self, tenant_id: uuid.UUID, job_id: uuid.UUID) -> dict[str, Any] | None:
        """The tenant's job as plain column values with ``stages`` (a list of stage rows), or None.

        Two Core queries (job row, then its stage rows) without ORM objects: the status poll's read, about three
        times cheaper than loading the entities with their relationship.
        """
        job = self.session.execute(_JOB_BY_ID, {"job_id": job_id, "tenant_id": tenant_id}).mappings().first()
        if job is None:
            return None
        values = dict(job)
        values["stages"] = [dict(row) for row in self.session.execute(_STAGES_OF, {"job_id": job_id}).mappings()]
        return values

    def list(
        self,
        tenant_id: uuid.UUID,
        *,
        limit: int,
        after: str | None = None,
        status: JobStatus | None = None,
        created_after: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
        parent_id: uuid.UUID | None = None,
        name: str | None = None,
    ) -> Page[Job]:
        """One cursor page of the tenant's jobs, newest first (``created_*`` bounds are exclusive)."""
        statement = select(Job).where(Job.tenant_id == tenant_id)
        if status is not None:
            statement = statement.where(Job.status == status)
        if created_after is not None:
            statement = statement.where(Job.created_at > created_after)
        if created_before is not None:
            statement = statement.where(Job.created_at < created_before)
        if parent_id is not None:
            statement = statement.where(Job.parent_id == parent_id)
        if name is not None:
            statement = statement.where(Job.name == name)
        return keyset_page(self.session, statement, Job.created_at, Job.id, limit=limit, after=after)

    def layers(self, job_id: uuid.UUID) -> list[JobLayer]:
        return list(
            self.session.scalars(
                select(JobLayer).where(JobLayer.job_id == job_id).order_by(JobLayer.position)
            )
        )

    def stage(self, job_id: uuid.UUID, name: str) -> JobStage | None:
        return self.session.get(JobStage, (job_id, name))

    def cancel_if_queued(self, job_id: uuid.UUID) -> bool:
        """queued -> cancelled, atomically; False when the job is no longer queued."""
        now = utcnow()
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.CANCELLED,
                cancel_requested=True,
                finished_at=now,
                updated_at=now,
                message="cancelled before it started",
            )
        )
        if result.rowcount == 1:
            record_status(self.session, job_id, JobStatus.CANCELLED, "cancelled before it started")
            return True
        return False

    def request_cancel_if_running(self, job_id: uuid.UUID) -> bool:
        """Flag a running job for cancellation (its worker notices at the next heartbeat)."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True, updated_at=utcnow())
        )
        return result.rowcount == 1

    def count_by_status(self) -> dict[str, int]:
        """Number of jobs per status, over all tenants (for /metrics)."""
        rows = self.session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {str(status): int(count) for status, count in rows}

    # ---- worker-facing -------------------------------------------------------------------------------------
    def get_by_id(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id)

    def next_queued(self, limit: int = 1) -> Sequence[uuid.UUID]:
        """Ids of the oldest queued jobs (candidates for :meth:`claim`)."""
        return self.session.scalars(
            select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at, Job.id).limit(limit)
        ).all()

    def claim(self, job_id: uuid.UUID, *, worker_id: str, lease_id: str) -> bool:
        """queued -> running for this worker, atomically (compare-and-set); False when someone else won."""
        now = utcnow()
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING,
                worker_id=worker_id,
                lease_id=lease_id,
                attempts=Job.attempts + 1,
                heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, now),
                updated_at=now,
                message="running",
            )
        )
        if result.rowcount == 1:
            record_status(self.session, job_id, JobStatus.RUNNING, "running")
            return True
        return False

    def touch(self, job_id: uuid.UUID, lease_id: str, **values: Any) -> bool:
        """Heartbeat (plus any ``values``) guarded by the lease; False when the lease is lost."""
        now = utcnow()
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_id == lease_id, Job.status == JobStatus.RUNNING)
            .values(heartbeat_at=now, updated_at=now, **values)
        )
        return result.rowcount == 1

    def progress_of(self, job_id: uuid.UUID) -> float:
        """The stored overall progress (0..1) of a job."""
        return float(self.session.scalar(select(Job.progress).where(Job.id == job_id)) or 0.0)

    def cancel_requested(self, job_id: uuid.UUID) -> bool:
        return bool(self.session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def set_stage(
        self,
        job_id: uuid.UUID,
        name: str,
        *,
        status: StageStatus,
        started_at: dt.datetime | None = None,
        finished_at: dt.datetime | None = None,
        output: dict[str, Any] | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status}
        if started_at is not None:
            values["started_at"] = started_at
        if finished_at is not None:
            values["finished_at"] = finished_at
        if output is not None:
            values["output"] = output
        self.session.execute(
            update(JobStage).where(JobStage.job_id == job_id, JobStage.name == name).values(**values)
        )

    def start_stage(self, job_id: uuid.UUID, name: str, now: dt.datetime) -> None:
        """pending -> running with a start time (finished and reused stages are left alone)."""
        self.session.execute(
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.name == name, JobStage.status == StageStatus.PENDING)
            .values(status=StageStatus.RUNNING, started_at=now, finished_at=None)
        )

    def stage_output(self, job_id: uuid.UUID, name: str) -> dict[str, Any] | None:
        """The output of a finished, reused or skipped stage, else None."""
        return self.session.scalar(
            select(JobStage.output).where(
                JobStage.job_id == job_id, JobStage.name == name, JobStage.status.in_(_DONE_STAGE)
            )
        )

    def stage_outputs(self, job_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """``{stage name: output}`` of every finished, reused or skipped stage of the job, in pipeline order."""
        rows = self.session.execute(
            select(JobStage.name, JobStage.output)
            .where(JobStage.job_id == job_id, JobStage.status.in_(_DONE_STAGE))
            .order_by(JobStage.position)
        )
        return {name: output for name, output in rows if output is not None}

    def close_open_stages(self, job_id: uuid.UUID, now: dt.datetime) -> None:
        """At the end of a successful run: running stages -> finished, never-run stages -> skipped."""
        self.session.execute(
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.status == StageStatus.RUNNING)
            .values(status=StageStatus.FINISHED, finished_at=now)
        )
        self.session.execute(
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.status == StageStatus.PENDING)
            .values(status=StageStatus.SKIPPED)
        )

    def reset_running_stages(self, job_id: uuid.UUID) -> None:
        """Stages interrupted mid-way go back to pending (finished ones are kept: they are the checkpoints)."""
        self.session.execute(
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.status == StageStatus.RUNNING)
            .values(status=StageStatus.PENDING)
        )

    def replace_layers(self, job_id: uuid.UUID, layers: Iterable[JobLayer]) -> None:
        for layer in self.session.scalars(select(JobLayer).where(JobLayer.job_id == job_id)):
            self.session.delete(layer)
        self.session.flush()
        self.session.add_all(layers)

    def requeue(self, job_id: uuid.UUID, *, lease_id: str, message: str) -> bool:
        """running -> queued for the run holding ``lease_id`` (its finished stages stay as checkpoints)."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_id == lease_id, Job.status == JobStatus.RUNNING)
            .values(
                status=JobStatus.QUEUED, lease_id=None, worker_id=None, message=message, updated_at=utcnow()
            )
        )
        if result.rowcount == 1:
            self.reset_running_stages(job_id)
            record_status(self.session, job_id, JobStatus.QUEUED, message)
            return True
        return False

    def fail_orphan(self, job_id: uuid.UUID, *, lease_id: str, error: dict[str, Any]) -> bool:
        now = utcnow()
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_id == lease_id, Job.status == JobStatus.RUNNING)
            .values(
                status=JobStatus.FAILED,
                lease_id=None,
                error=error,
                message=error["message"],
                finished_at=now,
                updated_at=now,
            )
        )
        if result.rowcount == 1:
            self.reset_running_stages(job_id)
            record_status(self.session, job_id, JobStatus.FAILED, error["message"], error=error)
            return True
        return False

    def running_jobs(
        self, *, worker_prefix: str | None = None, heartbeat_before: dt.datetime | None = None
    ) -> list[tuple[uuid.UUID, str | None, str | None, int]]:
        """``(id, worker_id, lease_id, attempts)`` of running jobs matching a worker-id prefix or stale heartbeat."""
        statement = select(Job.id, Job.worker_id, Job.lease_id, Job.attempts).where(
            Job.status == JobStatus.RUNNING
        )
        if worker_prefix is not None:
            statement = statement.where(Job.worker_id.startswith(worker_prefix, autoescape=True))
        if heartbeat_before is not None:
            statement = statement.where(Job.heartbeat_at < heartbeat_before)
        return [(row[0], row[1], row[2], row[3]) for row in self.session.execute(statement)]
