"""Run one job: claim it, run the pipeline with DB-backed progress and checkpoints, write the outcome.

Used by the embedded worker process and by Celery tasks alike. It takes a job id, opens its own sessions,
reloads the job, and copes with a job that is gone, already claimed, or cancelled. The pieces of a run live
beside this module: the lease heartbeat, progress and outcome writes in :mod:`service.worker.job_run`, the bundle
and per-layer rows of a success in :mod:`service.worker.results`, and failures, cancellation and shutdown
(the job goes back to ``queued`` with its finished stages kept) in :mod:`service.worker.failures`. After every
job the worker frees memory (``gc.collect`` and ``torch.cuda.empty_cache``) so it can take the next one.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.artifact.job_outputs import register_synthetic_images
from service.artifact.repository import ArtifactRepository
from service.artifact.storage import BlobStore
from service.db import session_scope
from service.errors import MPQError
from service.events.logs import JobLogCapture
from service.job.config import build_pipeline_config
from service.job.pipeline import pipeline_module
from service.job.repository import JobRepository
from service.job.schemas import JobCreate
from service.jsonable import jsonable
from service.models import JobStatus
from service.redact import Redactor
from service.settings import Settings
from service.tracking import track_job
from service.worker.failures import check_worker_device, handle_failure
from service.worker.job_run import JobRun
from service.worker.results import bundle_sections, layer_rows, write_bundle
from service.worker.store import DBStageStore, LeaseLost

__all__ = ["execute_job", "free_memory", "make_worker_id", "write_bundle"]

logger = logging.getLogger("mpq.worker")


def make_worker_id(kind: str) -> str:
    """``<kind>:<hostname>:<pid>``, recorded on the jobs this process runs."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


def _claim(
    session_factory: sessionmaker[Session], job_id: uuid.UUID, worker_id: str, lease_id: str
) -> tuple[JobCreate, dict[uuid.UUID, str]] | None:
    """Claim the job and read what the run needs; None when it is gone or someone else has it."""
    with session_scope(session_factory) as session:
        repository = JobRepository(session)
        if not repository.claim(job_id, worker_id=worker_id, lease_id=lease_id):
            session.rollback()
            return None
        session.commit()
        job = repository.get_by_id(job_id)
        if job is None:  # deleted between claim and read
            return None
        artifacts = ArtifactRepository(session)
        shas: dict[uuid.UUID, str] = {}
        for artifact_id in (job.weights_artifact_id, job.data_artifact_id, job.eval_artifact_id):
            if artifact_id is not None:
                artifact = artifacts.get(job.tenant_id, artifact_id)
                if artifact is not None:
                    shas[artifact_id] = artifact.sha256
        return JobCreate.model_validate(job.spec), shas


def execute_job(
    job_id: uuid.UUID,
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    worker_id: str,
    shutdown: threading.Event | None = None,
) -> JobStatus | None:
    """Claim and run job ``job_id``; returns its new status, or None when this call did not run it."""
    lease_id = uuid.uuid4().hex
    claimed = _claim(session_factory, job_id, worker_id, lease_id)
    if claimed is None:
        return None
    spec, shas = claimed
    store = BlobStore(settings.artifact_dir)
    job_dir = store.job_dir(job_id)
    output_dir = job_dir / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    run = JobRun(job_id, lease_id, session_factory, settings, shutdown or threading.Event())
    run.redactor = _job_redactor(store, settings, job_dir, shas)
    run.spec = spec
    log_capture = JobLogCapture(
        job_id, session_factory, settings.job_log_max_lines, redact=getattr(run.redactor, "text", None)
    )
    log_capture.start()
    logger.info("job %s: started by %s", job_id, worker_id)
    run.start_heartbeat()
    pipeline: Any = None
    try:

        def artifact_path(artifact_id: uuid.UUID) -> Path:
            sha = shas.get(artifact_id)
            path = store.blob_path(sha) if sha else None
            if path is None or not path.is_file():
                raise MPQError(
                    f"artifact {artifact_id} is missing from the artifact store", code="artifact_missing"
                )
            return path

        config = build_pipeline_config(
            spec, artifact_path=artifact_path, data_root=settings.data_root, worker_device=settings.device
        )
        check_worker_device(config.device)
        pipeline = pipeline_module()
        result = pipeline.run_pipeline(
            config,
            progress=run.progress,
            store=DBStageStore(job_id, lease_id, session_factory, job_dir / "work", store),
            output_dir=output_dir,
            should_cancel=run.should_cancel,
        )
        result_dict = jsonable(result.to_dict())
        result_dict.pop("artifact_dir", None)
        for key, section in bundle_sections(output_dir).items():
            result_dict.setdefault(key, section)
        result_dict = register_synthetic_images(session_factory, store, job_id, result_dict)  # data-free jobs
        result_dict = run.redactor.value(result_dict)
        sha256, size = write_bundle(output_dir, job_dir / "bundle.zip")
        if run.finish(
            JobStatus.SUCCEEDED,
            message="done",
            progress=1.0,
            result=result_dict,
            metrics=jsonable(result.metrics),
            bundle_sha256=sha256,
            bundle_size=size,
            error=None,
            layers=layer_rows(job_id, result_dict),
        ):
            logger.info("job %s: succeeded", job_id)
            track_job(session_factory, settings, job_id, output_dir, job_dir / "bundle.zip")
            return JobStatus.SUCCEEDED
        logger.warning("job %s: finished but the lease was lost; result discarded", job_id)
        return None
    except LeaseLost:
        logger.warning("job %s: lease lost, stopping this run", job_id)
        return None
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
        return handle_failure(run, pipeline, exc)
    finally:
        run.stop()
        log_capture.stop()
        free_memory()


def free_memory() -> None:
    """Give memory back between jobs: Python garbage and, when CUDA was used, PyTorch's cached GPU blocks."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _job_redactor(
    store: BlobStore, settings: Settings, job_dir: Path, shas: dict[uuid.UUID, str]
) -> Redactor:
    replacements: dict[str | Path, str] = {
        store.blob_path(sha): f"artifact {artifact_id}" for artifact_id, sha in shas.items()
    }
    replacements[job_dir / "output"] = "<bundle>"
    replacements[job_dir] = "<job>"
    return Redactor(
        replacements, roots=[(settings.artifact_dir, "<artifacts>"), (settings.data_root, "<data>")]
    )
