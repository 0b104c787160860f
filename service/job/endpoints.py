"""HTTP routes of jobs under ``/v1/jobs``."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response, status
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from service.auth.dependencies import TenantDep
from service.deps import SessionDep, SettingsDep
from service.idempotency import IdempotencyKeyDep, run_idempotent
from service.job.schemas import (
    JobCreate,
    JobPublic,
    JobReport,
    JobsPublic,
    JobSummary,
    LayerPublic,
    ParetoPublic,
    ParetoRequest,
    ReallocateRequest,
    StagePublic,
)
from service.job.service import JobService
from service.job.status import job_json
from service.models import JobStatus
from service.schemas import error_responses, json_response
from service.tracking import track_job

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _service(request: Request, session: SessionDep, settings: SettingsDep) -> JobService:
    return JobService(session, settings, request.app.state.dispatcher)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=error_responses(404, 409, 503),
    summary="Submit a quantization job",
)
def create_job(
    body: JobCreate,
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """Validate the request with the pipeline's checks (422 saying what to fix) and queue it.

    With an ``Idempotency-Key`` header, a retry of the same request returns the first response (no second job).
    """

    def handler() -> tuple[int, JobPublic]:
        job = _service(request, session, settings).create(tenant, body)
        return status.HTTP_202_ACCEPTED, JobPublic.model_validate(job)

    if idempotency_key is None:
        code, model = handler()
        return json_response(model, code)
    return run_idempotent(request, tenant, idempotency_key, body.model_dump(mode="json"), handler)


@router.get("", response_model=JobsPublic, responses=error_responses(), summary="List own jobs")
def list_jobs(
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    status: JobStatus | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    parent_id: uuid.UUID | None = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> Response:
    """The caller's jobs, newest first, one page after the cursor ``after``; filters combine with AND.

    ``created_after``/``created_before`` bound the creation time (exclusive, ISO 8601), ``name`` matches
    exactly. Cursor pages are stable: jobs created while paging never shift them.
    """
    page = _service(request, session, settings).list(
        tenant,
        status=status,
        created_after=created_after,
        created_before=created_before,
        parent_id=parent_id,
        name=name,
        limit=limit,
        after=after,
    )
    return json_response(
        JobsPublic(
            data=[JobSummary.model_validate(row) for row in page.rows],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )
    )


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(404))
async def get_job(job_id: uuid.UUID, request: Request, tenant: TenantDep) -> Response:
    """Status, progress (0..1), current stage, and every stage with start/end time and output."""
    body = await run_in_threadpool(job_json, request.app.state.read_session_factory, tenant.id, job_id)
    return Response(body, media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=error_responses(404, 409),
)
def cancel_job(
    job_id: uuid.UUID,
    request: Request,
    background: BackgroundTasks,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
) -> JobPublic:
    """Cancel a queued job, or ask a running one to stop (``cancel_requested``); 409 once it has finished."""
    job = _service(request, session, settings).cancel(tenant, job_id)
    if job.status == JobStatus.CANCELLED and settings.mlflow_tracking_uri:  # no worker will log this one
        background.add_task(track_job, request.app.state.session_factory, settings, job.id)
    return JobPublic.model_validate(job)


@router.get("/{job_id}/report", response_model=JobReport, responses=error_responses(404, 409))
def get_report(
    job_id: uuid.UUID, request: Request, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> JobReport:
    """Per-layer bits, sensitivities, metrics, budgets and timings of a succeeded job."""
    job, layers = _service(request, session, settings).report(tenant, job_id)
    return JobReport(
        job_id=job.id,
        status=job.status,
        result=job.result or {},
        layers=[LayerPublic.model_validate(layer) for layer in layers],
        stages=[StagePublic.model_validate(stage) for stage in job.stages],
    )


@router.get(
    "/{job_id}/artifact",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/zip": {}},
            "description": (
                "model.safetensors, quant_config.json, report.json, report.html, and model.onnx when the job "
                "asked for export_onnx"
            ),
        },
        **error_responses(404, 409),
    },
)
def download_artifact(
    job_id: uuid.UUID, request: Request, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """The quantized model bundle (zip), loadable with ``quant.load_quantized`` once extracted."""
    job, path = _service(request, session, settings).bundle_path(tenant, job_id)
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"mpq-{job.id}.zip",
        headers={"X-Content-SHA256": job.bundle_sha256 or ""},
    )


@router.post(
    "/{job_id}/reallocate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=error_responses(404, 409, 503),
)
def reallocate_job(
    job_id: uuid.UUID,
    body: ReallocateRequest,
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """A new job with a new budget that reuses this job's sensitivities and, for target ``onnxruntime-cpu``, its
    measured latency table (its ``sensitivity`` and ``latency`` stages are ``reused``, nothing is measured again).
    """

    def handler() -> tuple[int, JobPublic]:
        job = _service(request, session, settings).reallocate(tenant, job_id, body)
        return status.HTTP_202_ACCEPTED, JobPublic.model_validate(job)

    return run_idempotent(request, tenant, idempotency_key, body.model_dump(mode="json"), handler)


@router.post("/{job_id}/pareto", response_model=ParetoPublic, responses=error_responses(404, 409, 503))
def job_pareto(
    job_id: uuid.UUID,
    body: ParetoRequest,
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
) -> ParetoPublic:
    """Sweep one budget over the job's stored sensitivity (and latency) tables: the optimal allocation's
    objective, average weight bits, form counts and predicted latency per budget value. Nothing is measured or
    re-run; 409 ``sensitivity_unavailable`` for a job without a sensitivity table, 422 for a budget it cannot
    sweep (``latency``/``latency_ms`` need a job with target ``onnxruntime-cpu``)."""
    curve = _service(request, session, settings).pareto(tenant, job_id, body)
    return ParetoPublic.model_validate(curve)
