"""Jobs, their stages (with start/end time and output, which double as resume checkpoints) and per-layer bits.

The job row is the source of truth for a run: a worker claims it with a compare-and-set on ``status`` and sets a
fresh ``lease_id``; every later write of that worker is guarded by the lease, so a worker that lost its job
(re-queued after a missed heartbeat) can never overwrite the run that replaced it.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Base, JSONType, UTCDateTime, utcnow
from service.models._types import str_enum

__all__ = ["TERMINAL_STATUSES", "Job", "JobLayer", "JobStage", "JobStatus", "StageStatus"]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Statuses a job never leaves.
TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class StageStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    #: Output copied from the parent job (reallocation reuses the parent's sensitivity); the stage did not run.
    REUSED = "reused"
    #: The pipeline finished without running this stage (e.g. no sensitivity for a uniform-precision job).
    SKIPPED = "skipped"


class Job(Base):
    """One quantization run of a tenant."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    #: The job this one was reallocated from (its sensitivity is reused).
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), default=None, index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[JobStatus] = mapped_column(str_enum(JobStatus), default=JobStatus.QUEUED)
    #: The accepted request (artifact ids, not paths): what the worker turns into a ``PipelineConfig``.
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    weights_artifact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("artifacts.id", ondelete="RESTRICT"), default=None, index=True
    )
    data_artifact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("artifacts.id", ondelete="RESTRICT"), default=None, index=True
    )
    eval_artifact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("artifacts.id", ondelete="RESTRICT"), default=None, index=True
    )

    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: ``{"code", "message", "details"}`` of a failed job.
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    #: ``PipelineResult.to_dict()`` of a succeeded job.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    #: Problems that did not fail the job (e.g. experiment tracking unreachable): ``[{"code", "message"}]``.
    warnings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, default=None)
    #: The downloadable bundle (zip of model.safetensors, quant_config.json, report.json).
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    bundle_size: Mapped[int | None] = mapped_column(BigInteger, default=None)

    worker_id: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_id: Mapped[str | None] = mapped_column(String(32), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    stages: Mapped[list[JobStage]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobStage.position"
    )
    layers: Mapped[list[JobLayer]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobLayer.position"
    )


class JobStage(Base):
    """One pipeline stage of a job: status, start/end time and its JSON output (the resume checkpoint)."""

    __tablename__ = "job_stages"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[StageStatus] = mapped_column(str_enum(StageStatus), default=StageStatus.PENDING)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    #: For ``reused`` stages: the job whose output was copied.
    reused_from: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)

    job: Mapped[Job] = relationship(back_populates="stages")


class JobLayer(Base):
    """The bits chosen for one layer of a finished job (the allocation, queryable per layer)."""

    __tablename__ = "job_layers"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    wbits: Mapped[int | None] = mapped_column(Integer, default=None)
    abits: Mapped[int | None] = mapped_column(Integer, default=None)
    sensitivity: Mapped[float | None] = mapped_column(Float, default=None)
    #: Everything else the pipeline reported for this layer (quantizer kinds, costs, ...).
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    job: Mapped[Job] = relationship(back_populates="layers")
