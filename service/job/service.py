"""Job use cases for tenants: create (validated, 202), read, list, cancel, report, bundle, reallocate, pareto.

A job is accepted only after the pipeline's own checks pass on the resolved configuration; the job row and its
stage rows are written in one transaction, so a rejected request leaves nothing behind.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.allocate.service import check_time_limit
from service.artifact.repository import ArtifactRepository
from service.artifact.storage import BlobStore
from service.auth.service import CurrentTenant
from service.errors import Conflict, NotFound, ServiceUnavailable, UnprocessableEntity
from service.events.recorder import record_status
from service.job import pipeline
from service.job.config import (
    build_pipeline_config,
    check_artifact_finite,
    check_device,
    check_limits,
    workers_have_cuda,
)
from service.job.repository import JobRepository
from service.job.schemas import JobCreate, ParetoRequest, ReallocateRequest
from service.models import Artifact, ArtifactKind, Job, JobLayer, JobStatus
from service.models.job import TERMINAL_STATUSES
from service.pagination import Page
from service.settings import Settings

__all__ = ["DEFAULT_PARETO_TIME_LIMIT", "Dispatcher", "JobService", "NullDispatcher"]

#: Stages a reallocation copies from its parent besides ``sensitivity`` (when the parent ran them): the synthetic
#: calibration images of a data-free job (``synthesize``, a blob), the parameter table (``calibrate``, a blob of the
#: shared store) and the measured latency table of an ``onnxruntime-cpu`` job. ``allocate`` and later stages depend
#: on the budget and run again.
_REUSED_STAGES = ("synthesize", "calibrate", "latency")
#: Solver seconds per point of ``POST /v1/jobs/{id}/pareto`` when the request gives none (at most the operator's
#: ``MPQ_ALLOCATE_MAX_TIME_LIMIT``); the solver usually needs milliseconds per point.
DEFAULT_PARETO_TIME_LIMIT = 5.0


class Dispatcher(Protocol):
    """Hands an accepted job to the workers (no-op for the embedded worker, which polls the table)."""

    def enqueue(self, job_id: uuid.UUID) -> None: ...


class NullDispatcher:
    """The embedded worker finds queued jobs itself."""

    def enqueue(self, job_id: uuid.UUID) -> None:
        return None


class JobService:
    """Everything a tenant can do with jobs."""

    def __init__(self, session: Session, settings: Settings, dispatcher: Dispatcher | None = None) -> None:
        self.session = session
        self.settings = settings
        self.store = BlobStore(settings.artifact_dir)
        self.dispatcher = dispatcher or NullDispatcher()
        self.jobs = JobRepository(session)
        self.artifacts = ArtifactRepository(session)

    # ---- create --------------------------------------------------------------------------------------------
    def _artifact(
        self, tenant: CurrentTenant, artifact_id: uuid.UUID, field: str, kind: ArtifactKind
    ) -> Artifact:
        artifact = self.artifacts.get(tenant.id, artifact_id)
        if artifact is None:
            raise NotFound(
                f"{field}: artifact {artifact_id} not found",
                code="artifact_not_found",
                details={"field": field},
            )
        if artifact.kind != kind:
            raise UnprocessableEntity(
                f"{field}: artifact {artifact_id} holds {artifact.kind.value}, expected {kind.value}",
                code="wrong_artifact_kind",
                details={"field": field, "kind": artifact.kind.value, "expected": kind.value},
            )
        if not self.store.blob_path(artifact.sha256).is_file():
            raise Conflict(
                f"{field}: the file of artifact {artifact_id} is missing from the artifact store",
                code="artifact_missing",
            )
        check_artifact_finite(artifact, field)
        return artifact

    def _resolve(self, tenant: CurrentTenant, spec: JobCreate) -> dict[str, Artifact]:
        wanted = {
            "model.weights_artifact_id": (spec.model.weights_artifact_id, ArtifactKind.WEIGHTS),
            "data.artifact_id": (spec.data.artifact_id, ArtifactKind.IMAGES),
            "data.eval_artifact_id": (spec.data.eval_artifact_id, ArtifactKind.IMAGES),
        }
        return {
            field: self._artifact(tenant, artifact_id, field, kind)
            for field, (artifact_id, kind) in wanted.items()
            if artifact_id is not None
        }

    def _validate(self, tenant: CurrentTenant, spec: JobCreate) -> tuple[dict[str, Artifact], list[dict]]:
        """The artifacts ``spec`` names (by field) and the validation's warnings; raises what makes it a 4xx."""
        check_device(spec.device, self.settings)
        artifacts = self._resolve(tenant, spec)
        by_id = {artifact.id: artifact for artifact in artifacts.values()}
        config = build_pipeline_config(
            spec,
            artifact_path=lambda artifact_id: self.store.blob_path(by_id[artifact_id].sha256),
            data_root=self.settings.data_root,
        )
        from quant.presets import resolve_preset  # torch: imported when the first job is validated

        device = config.device
        if device == "auto":
            device = "cuda" if workers_have_cuda(self.settings) else "cpu"
        config = resolve_preset(config, device)  # limits and validation see the settings the job will run with
        check_limits(config, self.settings)
        return artifacts, pipeline.validate(config) or []

    def _insert(
        self,
        tenant: CurrentTenant,
        spec: JobCreate,
        artifacts: dict[str, Artifact],
        warnings: list[dict],
        *,
        parent: Job | None = None,
        reused: dict[str, tuple[dict[str, Any], uuid.UUID]] | None = None,
    ) -> Job:
        def artifact_id(field: str) -> uuid.UUID | None:
            artifact = artifacts.get(field)
            return artifact.id if artifact is not None else None

        job = Job(
            tenant_id=tenant.id,
            parent_id=parent.id if parent is not None else None,
            name=spec.name,
            status=JobStatus.QUEUED,
            # What the tenant gave, not the defaults: a preset fills the rest when the job runs (quant.presets).
            spec=spec.model_dump(mode="json", exclude_unset=True),
            weights_artifact_id=artifact_id("model.weights_artifact_id"),
            data_artifact_id=artifact_id("data.artifact_id"),
            eval_artifact_id=artifact_id("data.eval_artifact_id"),
            message="queued",
            warnings=list(warnings) or None,
        )
        self.jobs.add(job, reused=reused)
        record_status(self.session, job.id, JobStatus.QUEUED, "queued")
        self.session.commit()
        try:
            self.dispatcher.enqueue(job.id)
        except Exception as exc:
            job.status = JobStatus.FAILED
            job.error = {
                "code": "enqueue_failed",
                "message": f"could not reach the job queue: {exc}",
                "details": {},
            }
            job.message = job.error["message"]
            record_status(self.session, job.id, JobStatus.FAILED, job.message, error=job.error)
            self.session.commit()
            raise ServiceUnavailable(
                "the job queue is unreachable; the job was not started",
                code="queue_unavailable",
                details={"job_id": str(job.id)},
            ) from exc
        return job

    def create(self, tenant: CurrentTenant, spec: JobCreate) -> Job:
        """Validate ``spec`` against the pipeline and queue it."""
        artifacts, warnings = self._validate(tenant, spec)
        return self._insert(tenant, spec, artifacts, warnings)

    # ---- read ----------------------------------------------------------------------------------------------
    def get(self, tenant: CurrentTenant, job_id: uuid.UUID) -> Job:
        """The tenant's job; 404 for unknown ids and other tenants' jobs alike."""
        job = self.jobs.get(tenant.id, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found", code="job_not_found")
        return job

    def list(self, tenant: CurrentTenant, *, limit: int, after: str | None, **filters: Any) -> Page[Job]:
        """One cursor page of the tenant's jobs (filters: see :meth:`JobRepository.list`)."""
        return self.jobs.list(tenant.id, limit=limit, after=after, **filters)

    def report(self, tenant: CurrentTenant, job_id: uuid.UUID) -> tuple[Job, list[JobLayer]]:
        """The result and per-layer bits of a succeeded job; 409 before that."""
        job = self.get(tenant, job_id)
        if job.status != JobStatus.SUCCEEDED or job.result is None:
            raise Conflict(
                f"job {job_id} has no report: it is {job.status.value}",
                code="report_not_ready",
                details={"status": job.status.value},
            )
        return job, self.jobs.layers(job.id)

    def bundle_path(self, tenant: CurrentTenant, job_id: uuid.UUID) -> tuple[Job, Path]:
        """The zip bundle of a succeeded job; 409 before that."""
        job = self.get(tenant, job_id)
        path = self.store.job_dir(job.id) / "bundle.zip"
        if job.status != JobStatus.SUCCEEDED or job.bundle_sha256 is None:
            raise Conflict(
                f"job {job_id} has no artifact: it is {job.status.value}",
                code="artifact_not_ready",
                details={"status": job.status.value},
            )
        if not path.is_file():
            raise Conflict(
                f"the artifact of job {job_id} is missing from the artifact store", code="artifact_missing"
            )
        return job, path

    # ---- cancel --------------------------------------------------------------------------------------------
    def cancel(self, tenant: CurrentTenant, job_id: uuid.UUID) -> Job:
        """Cancel a queued job at once, or ask a running job's worker to stop; 409 for finished jobs."""
        job = self.get(tenant, job_id)
        if job.status in TERMINAL_STATUSES:
            raise Conflict(
                f"job {job_id} is already {job.status.value} and cannot be cancelled",
                code="job_finished",
                details={"status": job.status.value},
            )
        if not self.jobs.cancel_if_queued(job.id):
            self.jobs.request_cancel_if_running(job.id)
        self.session.commit()
        self.session.refresh(job)
        if job.status in {JobStatus.SUCCEEDED, JobStatus.FAILED}:  # finished in between
            raise Conflict(
                f"job {job_id} is already {job.status.value} and cannot be cancelled",
                code="job_finished",
                details={"status": job.status.value},
            )
        return job

    # ---- reallocate ----------------------------------------------------------------------------------------
    def _reusable(self, job: Job, name: str) -> tuple[dict[str, Any], uuid.UUID] | None:
        """The output of ``job``'s stage ``name`` and the job that computed it, when it ran (or was reused);
        None for a stage that was skipped or has not finished."""
        stage = self.jobs.stage(job.id, name)
        output = self.jobs.stage_output(job.id, name)
        if stage is None or output is None or output.get("skipped") is True:
            return None
        return output, stage.reused_from or job.id

    def reallocate(self, tenant: CurrentTenant, job_id: uuid.UUID, request: ReallocateRequest) -> Job:
        """A new job with the parent's spec and a new budget, reusing the parent's sensitivity stage output and,
        for target ``onnxruntime-cpu``, its measured latency table (a reallocation never measures again)."""
        parent = self.get(tenant, job_id)
        sensitivity = self._reusable(parent, "sensitivity")
        if sensitivity is None:
            raise Conflict(
                f"job {job_id} has no sensitivities to reuse (its sensitivity stage has not finished; "
                "only mixed-precision jobs with budgets compute them)",
                code="sensitivity_unavailable",
                details={"status": parent.status.value},
            )
        reused = {"sensitivity": sensitivity}
        for name in _REUSED_STAGES:
            if (output := self._reusable(parent, name)) is not None:
                reused[name] = output
        spec_data = dict(parent.spec)
        method = dict(spec_data.get("method", {}))
        method["budgets"] = request.budgets
        if method.get("sweep_budget") is not None and method["sweep_budget"] not in request.budgets:
            del method["sweep_budget"]  # the parent swept a budget the new job does not have: sweep the first
        if request.fixed_layers is not None:
            method["fixed_layers"] = request.fixed_layers
        spec_data["method"] = method
        spec_data["name"] = (
            request.name or (f"{parent.name} (reallocated)" if parent.name else "reallocated")[:200]
        )
        try:
            spec = JobCreate.model_validate(spec_data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise UnprocessableEntity(
                f"invalid reallocation: {where}: {str(first['msg']).removeprefix('Value error, ')}",
                code="invalid_budget",
                details={"loc": [str(part) for part in first["loc"]]},
            ) from exc
        artifacts, warnings = self._validate(tenant, spec)
        return self._insert(tenant, spec, artifacts, warnings, parent=parent, reused=reused)

    # ---- pareto --------------------------------------------------------------------------------------------
    def pareto(self, tenant: CurrentTenant, job_id: uuid.UUID, request: ParetoRequest) -> dict[str, Any]:
        """The Pareto curve of ``request.budget`` solved from the job's stored stage outputs.

        409 ``sensitivity_unavailable`` while the job has no sensitivity table (uniform-precision job, or its
        sensitivity stage has not finished); 422 for a budget the job cannot sweep or a too long time limit.
        """
        job = self.get(tenant, job_id)
        cap = self.settings.allocate_max_time_limit
        time_limit = (
            request.time_limit if request.time_limit is not None else min(DEFAULT_PARETO_TIME_LIMIT, cap)
        )
        check_time_limit(time_limit, cap)
        if self._reusable(job, "sensitivity") is None:
            raise Conflict(
                f"job {job_id} has no sensitivity table to sweep (it is {job.status.value}; only "
                "mixed-precision jobs with budgets compute one, in their sensitivity stage)",
                code="sensitivity_unavailable",
                details={"status": job.status.value},
            )
        stages = self.jobs.stage_outputs(job.id)
        method = JobCreate.model_validate(job.spec).method
        curve = pipeline.pareto(
            stages,
            method,
            request.budget,
            points=request.points,
            values=request.values,
            time_limit=time_limit,
        )
        return {**curve, "job_id": job.id}
