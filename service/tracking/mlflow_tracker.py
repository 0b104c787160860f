"""Log a finished job to MLflow as one run (``MlflowClient``); a tracking failure never fails the job.

- experiment: ``MPQ_MLFLOW_EXPERIMENT`` with ``{tenant}`` replaced (default ``mpq-{tenant}``);
- run: start and end times are the job's (started, else created; finished); status ``FINISHED`` for succeeded,
  ``FAILED`` for failed and ``KILLED`` for cancelled jobs (cancelled before they started too);
- params: the resolved configuration, every field (:mod:`service.tracking.params`);
- metrics: float/quantized top-1, KL, agreement, average weight/activation bits, size, BOPs, seconds per stage,
  and the per-block reconstruction errors as steps (``reconstruct_block_error`` at step = block index);
- artifacts: ``report.html``, ``quant_config.json``, the zip ``bundle`` and, for a succeeded job, an MLflow
  ``python_function`` ``model`` (:mod:`service.tracking.model`); tags: job id, tenant, parent job, status;
- with ``MPQ_MLFLOW_REGISTER_MODEL=NAME`` a succeeded job's ``model`` becomes a version of model ``NAME``, which
  ``mlflow.pyfunc.load_model("models:/NAME/<version>")`` loads.

When MLflow is unreachable (or anything else goes wrong) the job gets a ``tracking_failed`` warning, which
``/metrics`` counts (``mpq_tracking_failures_total``); the tenant sees neither the tracking URL nor the error
text (they go to the server log, under the job id).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope, utcnow
from service.models import Job, Tenant
from service.settings import Settings
from service.tracking.params import resolved_params

__all__ = ["RUN_STATUS", "JobRecord", "log_run", "track_job"]

logger = logging.getLogger("mpq.tracking")

#: MLflow run status of each finished job status.
RUN_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
#: Params per ``log_batch`` call (MLflow's limit).
_PARAMS_PER_BATCH = 100


@dataclass(frozen=True)
class JobRecord:
    """What the tracker needs of a finished job."""

    id: uuid.UUID
    name: str
    tenant: str
    parent_id: uuid.UUID | None
    status: str
    spec: dict[str, Any]
    result: dict[str, Any]
    error: dict[str, Any] | None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def load(self) -> dict[str, Any]:
        """The output of the job's load stage (device, input shape), empty when it did not run."""
        return dict((self.result.get("stages") or {}).get("load") or {})


def _read(session_factory: sessionmaker[Session], job_id: uuid.UUID) -> JobRecord | None:
    with session_scope(session_factory) as session:
        row = session.execute(
            select(Job, Tenant.name).join(Tenant, Tenant.id == Job.tenant_id).where(Job.id == job_id)
        ).first()
        if row is None:
            return None
        job, tenant = row
        return JobRecord(
            id=job.id,
            name=job.name,
            tenant=tenant,
            parent_id=job.parent_id,
            status=job.status.value,
            spec=dict(job.spec or {}),
            result=dict(job.result or {}),
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _millis(value: dt.datetime | None) -> int:
    return int((value or utcnow()).timestamp() * 1000)


def _device(job: JobRecord, settings: Settings) -> str:
    """The device the job ran on (its load stage says), else the one it would run on."""
    ran_on = job.load.get("device")
    if isinstance(ran_on, str) and ran_on:
        return ran_on
    requested = str(job.spec.get("device") or "auto")
    if requested != "auto":
        return requested
    from service.job.config import workers_have_cuda

    return "cuda" if workers_have_cuda(settings) else "cpu"


def _metrics(result: dict[str, Any]) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of the run's metrics."""
    metrics = result.get("metrics") or {}
    flat = {
        "float_top1": (metrics.get("float") or {}).get("top1"),
        "quantized_top1": (metrics.get("quantized") or {}).get("top1"),
        "kl": (metrics.get("quantized") or {}).get("kl"),
        "agreement": (metrics.get("quantized") or {}).get("agreement"),
        "avg_weight_bits": (metrics.get("bits") or {}).get("weights_avg"),
        "avg_activation_bits": (metrics.get("bits") or {}).get("activations_avg"),
        "size_bytes": metrics.get("size_bytes"),
        "bops": metrics.get("bops"),
    }
    for stage, seconds in (result.get("timings") or {}).items():
        flat[f"stage_seconds.{stage}"] = seconds
    out = [(key, number, 0) for key, value in flat.items() if (number := _number(value)) is not None]
    blocks = ((result.get("stages") or {}).get("reconstruct") or {}).get("blocks") or []
    for position, block in enumerate(blocks):
        step = int(block.get("index", position)) if isinstance(block, dict) else position
        for source, key in (
            ("error_after", "reconstruct_block_error"),
            ("train_loss", "reconstruct_block_train_loss"),
        ):
            value = _number(block.get(source)) if isinstance(block, dict) else None
            if value is not None:
                out.append((key, value, step))
    return out


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by another worker
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _log_outputs(client: Any, run_id: str, job: JobRecord, output_dir: Path | None, bundle: Path | None) -> bool:
    """Log the report, config, zip bundle and (succeeded jobs) the pyfunc model; True when a model was logged."""
    if output_dir is not None:
        for name in ("report.html", "quant_config.json"):
            if (output_dir / name).is_file():
                client.log_artifact(run_id, str(output_dir / name))
    if bundle is not None and bundle.is_file():
        client.log_artifact(run_id, str(bundle), artifact_path="bundle")
    shape = job.load.get("input_shape")
    if job.status != "succeeded" or output_dir is None or not (output_dir / "model.safetensors").is_file():
        return False
    if not (isinstance(shape, list) and len(shape) == 3):
        raise ValueError(f"job {job.id}: its load stage recorded no input shape, so no model signature")
    from service.tracking.model import log_pyfunc_model

    log_pyfunc_model(client, run_id, output_dir, [int(size) for size in shape])
    return True


def log_run(settings: Settings, job: JobRecord, output_dir: Path | None, bundle: Path | None) -> str:
    """Create the job's MLflow run with params, metrics, artifacts and tags; returns the run id."""
    # bounded retries: an unreachable server costs seconds, not the minutes of MLflow's default backoff
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment_id = _experiment_id(client, settings.mlflow_experiment.replace("{tenant}", job.tenant))
    tags = {
        "mpq.job_id": str(job.id),
        "mpq.tenant": job.tenant,
        "mpq.parent_job_id": str(job.parent_id) if job.parent_id else "",
        "mpq.status": job.status,
    }
    if job.error:
        tags["mpq.error_code"] = str(job.error.get("code", ""))
    run = client.create_run(
        experiment_id,
        start_time=_millis(job.started_at or job.created_at),
        run_name=job.name or f"job-{job.id}",
        tags=tags,
    )
    run_id = run.info.run_id
    try:
        end = _millis(job.finished_at)
        metrics = [Metric(key, value, end, step) for key, value, step in _metrics(job.result)]
        params = [Param(key, value) for key, value in resolved_params(job.spec, _device(job, settings)).items()]
        for start in range(0, max(len(params), 1), _PARAMS_PER_BATCH):
            client.log_batch(
                run_id, metrics=metrics if start == 0 else [], params=params[start : start + _PARAMS_PER_BATCH]
            )
        model = _log_outputs(client, run_id, job, output_dir, bundle)
        if settings.mlflow_register_model and model:
            name = settings.mlflow_register_model
            try:
                client.create_registered_model(name)
            except Exception:  # noqa: BLE001 - already registered
                logger.debug("registered model %s exists", name)
            client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED", end_time=_millis(job.finished_at))
        raise
    client.set_terminated(run_id, RUN_STATUS.get(job.status, "FAILED"), end_time=_millis(job.finished_at))
    return run_id


def _add_warning(session_factory: sessionmaker[Session], job_id: uuid.UUID, warning: dict[str, str]) -> None:
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.warnings = [*(job.warnings or []), warning]
            session.commit()


def track_job(
    session_factory: sessionmaker[Session],
    settings: Settings,
    job_id: uuid.UUID,
    output_dir: Path | None = None,
    bundle: Path | None = None,
) -> str | None:
    """Log finished job ``job_id`` to MLflow when ``MPQ_MLFLOW_TRACKING_URI`` is set; returns the run id.

    Never raises: a failure becomes a ``tracking_failed`` warning on the job, worded without the tracking
    server's address or the error text (both go to the server log).
    """
    if not settings.mlflow_tracking_uri:
        return None
    try:
        job = _read(session_factory, job_id)
        if job is None:
            return None
        return log_run(settings, job, Path(output_dir) if output_dir is not None else None, bundle)
    except Exception as exc:  # tracking must never fail the job
        logger.warning("job %s: MLflow tracking failed: %s", job_id, exc, exc_info=True)
        try:
            _add_warning(
                session_factory,
                job_id,
                {
                    "code": "tracking_failed",
                    "message": (
                        f"the job's MLflow run could not be logged ({type(exc).__name__}); the job itself is not "
                        f"affected, and the server log has the details under job id {job_id}"
                    ),
                },
            )
        except Exception:
            logger.warning("job %s: could not record the tracking warning", job_id, exc_info=True)
        return None
