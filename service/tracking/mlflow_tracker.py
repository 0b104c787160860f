"""Log a finished job to MLflow as one run (``MlflowClient``); a tracking failure never fails the job.

- experiment: ``MPQ_MLFLOW_EXPERIMENT`` with ``{tenant}`` replaced (default ``mpq-{tenant}``);
- params: model, arch kwargs, budgets, method settings, preset, seed, device, calibration size;
- metrics: float/quantized top-1, KL, agreement, average weight/activation bits, size, BOPs, seconds per stage,
  and the per-block reconstruction errors as steps (``reconstruct_block_error`` at step = block index);
- artifacts: ``report.html``, ``quant_config.json`` and the bundle; tags: job id, tenant, parent job, status;
- with ``MPQ_MLFLOW_REGISTER_MODEL=NAME`` a succeeded job's bundle becomes a version of model ``NAME``.

When MLflow is unreachable (or anything else goes wrong) the job gets a ``tracking_failed`` warning, which
``/metrics`` counts (``mpq_tracking_failures_total``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.kit.db import session_scope
from service.models import Job, Tenant
from service.settings import Settings

__all__ = ["JobRecord", "log_run", "track_job"]

logger = logging.getLogger("mpq.tracking")


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
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _params(spec: dict[str, Any]) -> dict[str, str]:
    model = spec.get("model") or {}
    method = spec.get("method") or {}
    data = spec.get("data") or {}
    params = {
        "model": str(model.get("name", "")),
        "seed": str(spec.get("seed", 0)),
        "device": str(spec.get("device", "auto")),
        "num_calibration": str(data.get("num_calibration", "")),
    }
    if model.get("arch_kwargs"):
        params["arch_kwargs"] = json.dumps(model["arch_kwargs"], sort_keys=True)
    for key, value in (method.get("budgets") or {}).items():
        params[f"budget.{key}"] = str(value)
    for key, value in method.items():
        if key != "budgets" and (isinstance(value, str | int | float | bool) or value is None):
            params[f"method.{key}"] = str(value)
    if "preset" in method or "preset" in spec:
        params["preset"] = str(method.get("preset", spec.get("preset")))
    return {key: value[:500] for key, value in params.items()}


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


def log_run(settings: Settings, job: JobRecord, output_dir: Path, bundle: Path | None) -> str:
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
    run = client.create_run(experiment_id, run_name=job.name or f"job-{job.id}", tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in _metrics(job.result)]
    params = [Param(key, value) for key, value in _params(job.spec).items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    for name in ("report.html", "quant_config.json"):
        if (output_dir / name).is_file():
            client.log_artifact(run_id, str(output_dir / name))
    if bundle is not None and bundle.is_file():
        client.log_artifact(run_id, str(bundle), artifact_path="bundle")
    if (
        settings.mlflow_register_model
        and job.status == "succeeded"
        and bundle is not None
        and bundle.is_file()
    ):
        name = settings.mlflow_register_model
        try:
            client.create_registered_model(name)
        except Exception:  # noqa: BLE001 - already registered
            logger.debug("registered model %s exists", name)
        client.create_model_version(name, source=f"{run.info.artifact_uri}/bundle", run_id=run_id)
    client.set_terminated(run_id, "FINISHED" if job.status == "succeeded" else "FAILED")
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
    output_dir: Path,
    bundle: Path | None = None,
) -> str | None:
    """Log finished job ``job_id`` to MLflow when ``MPQ_MLFLOW_TRACKING_URI`` is set; returns the run id.

    Never raises: a failure becomes a ``tracking_failed`` warning on the job.
    """
    if not settings.mlflow_tracking_uri:
        return None
    try:
        job = _read(session_factory, job_id)
        if job is None:
            return None
        return log_run(settings, job, Path(output_dir), bundle)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the job
        logger.warning("job %s: MLflow tracking failed: %s", job_id, exc)
        try:
            _add_warning(
                session_factory,
                job_id,
                {
                    "code": "tracking_failed",
                    "message": f"MLflow tracking failed: {type(exc).__name__}: {exc}"[:500],
                },
            )
        except Exception:
            logger.warning("job %s: could not record the tracking warning", job_id, exc_info=True)
        return None
