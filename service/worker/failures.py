"""How a failed, cancelled or interrupted run ends: the job's status and the error a tenant sees.

A tenant never sees a traceback or a server path: a failure is recorded as a code, a message (paths replaced by
artifact ids, see :class:`~service.redact.Redactor`) and the job id as correlation id; the traceback goes to
the server log. CUDA out-of-memory fails the job with ``out_of_memory`` and what to reduce; a worker shutting
down puts the job back in the queue with its finished stages kept.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

from service.errors import MPQError
from service.job.pipeline import input_error_to_dict
from service.jsonable import jsonable
from service.models import JobStatus
from service.tracking import track_job
from service.worker.job_run import JobRun
from service.worker.store import LeaseLost

__all__ = ["check_worker_device", "handle_failure"]

logger = logging.getLogger("mpq.worker")


def check_worker_device(device: str) -> None:
    """Fail fast (``device_unavailable``) when a job asks for CUDA on a worker that has none."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise MPQError(
            f"device {device!r} was requested but this worker has no usable GPU; ask for 'cpu' or 'auto'",
            code="device_unavailable",
        )


def _is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError | MemoryError) and (
        "out of memory" in str(exc).lower() or isinstance(exc, MemoryError)
    )


def _out_of_memory_error(run: JobRun) -> dict[str, Any]:
    spec = run.spec
    batch = spec.data.batch_size if spec is not None else None
    images = spec.data.num_calibration if spec is not None else None
    return {
        "code": "out_of_memory",
        "message": (
            f"the job ran out of memory on the worker's device; reduce data.batch_size (now {batch}), "
            f"data.num_calibration (now {images}) or the model's image size, then submit again"
        ),
        "details": {"job_id": str(run.job_id), "batch_size": batch, "num_calibration": images},
    }


def handle_failure(run: JobRun, pipeline: Any, exc: Exception) -> JobStatus | None:
    cancelled_type = getattr(pipeline, "PipelineCancelled", None)
    input_type = getattr(pipeline, "PipelineInputError", None)
    if run.lease_lost.is_set() or isinstance(exc, LeaseLost):
        logger.warning("job %s: lease lost, stopping this run", run.job_id)
        return None
    if (cancelled_type is not None and isinstance(exc, cancelled_type)) or run.should_cancel():
        if run.shutdown.is_set() and not run.cancel.is_set():
            run.requeue("worker stopped; the job resumes from its last finished stage")
            logger.info("job %s: re-queued on worker shutdown", run.job_id)
            return JobStatus.QUEUED
        if run.finish(JobStatus.CANCELLED, message="cancelled"):
            track_job(run.session_factory, run.settings, run.job_id)  # an MLflow run with status KILLED
        logger.info("job %s: cancelled", run.job_id)
        return JobStatus.CANCELLED
    if input_type is not None and isinstance(exc, input_type):
        error = input_error_to_dict(exc)
    elif isinstance(exc, MPQError):
        error = {"code": exc.code, "message": exc.message, "details": exc.details}
    elif _is_out_of_memory(exc):
        logger.error("job %s: out of memory\n%s", run.job_id, traceback.format_exc())
        error = _out_of_memory_error(run)
    else:
        logger.error("job %s: failed\n%s", run.job_id, traceback.format_exc())
        error = {
            "code": "internal_error",
            "message": (
                f"the job failed with an unexpected {type(exc).__name__}; the server log has the details "
                f"under job id {run.job_id}"
            ),
            "details": {},
        }
    error["details"] = {**(error.get("details") or {}), "job_id": str(run.job_id)}
    error = run.redactor.value(jsonable(error))
    if run.finish(JobStatus.FAILED, message=error["message"], error=error):
        track_job(run.session_factory, run.settings, run.job_id)
    logger.info("job %s: failed (%s)", run.job_id, error["code"])
    return JobStatus.FAILED
