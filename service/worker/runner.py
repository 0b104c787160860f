"""Run one job: claim it, run the pipeline with DB-backed progress and checkpoints, write the outcome.

Used by the embedded worker process and by Celery tasks alike. It takes a job id, opens its own sessions,
reloads the job, and copes with a job that is gone, already claimed, or cancelled. A heartbeat thread keeps the
lease alive and notices cancellation requests; when the worker is asked to shut down, the job goes back to
``queued`` with its finished stages kept, so the next worker resumes from the last finished stage.

Tenants never see a traceback or a server path: a failure is recorded as a code, a message (paths replaced by
artifact ids, see :class:`~service.kit.redact.Redactor`) and the job id as correlation id; the traceback goes to
the server log. CUDA out-of-memory fails the job with ``out_of_memory`` and what to reduce, and after every job
the worker frees memory (``gc.collect`` and ``torch.cuda.empty_cache``) so it can take the next one.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.artifact.repository import ArtifactRepository
from service.artifact.storage import BlobStore
from service.events.logs import JobLogCapture
from service.events.progress import ProgressTracker
from service.events.recorder import record_progress, record_stage, record_status
from service.job.config import build_pipeline_config
from service.job.pipeline import input_error_to_dict, pipeline_module
from service.job.repository import JobRepository
from service.job.schemas import JobCreate
from service.kit.db import session_scope, utcnow
from service.kit.errors import MPQError
from service.kit.jsonable import jsonable
from service.kit.redact import Redactor
from service.models import JobLayer, JobStatus
from service.settings import Settings
from service.tracking import track_job
from service.worker.store import DBStageStore, LeaseLost

__all__ = ["execute_job", "make_worker_id", "write_bundle"]

logger = logging.getLogger("mpq.worker")

#: Minimum seconds between two progress writes within one stage.
PROGRESS_WRITE_INTERVAL = 0.5


def make_worker_id(kind: str) -> str:
    """``<kind>:<hostname>:<pid>``, recorded on the jobs this process runs."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


def write_bundle(output_dir: Path, bundle: Path) -> tuple[str, int]:
    """Zip the files of ``output_dir`` into ``bundle`` (atomically) and return its sha256 and size."""
    tmp = bundle.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(output_dir.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(output_dir).as_posix())
    os.replace(tmp, bundle)
    digest = hashlib.sha256()
    with bundle.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), bundle.stat().st_size


#: Sections of the bundle's report.json that the job's result (``GET /v1/jobs/{id}/report``) repeats: the Pareto
#: curve of a sweep (``method.sweep``) and the latency summary of an ``onnxruntime-cpu`` job.
BUNDLE_REPORT_SECTIONS = ("pareto", "latency")


def _bundle_sections(output_dir: Path) -> dict[str, Any]:
    """The :data:`BUNDLE_REPORT_SECTIONS` the export stage wrote to ``output_dir/report.json`` (absent: none)."""
    try:
        report = json.loads((output_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(report, dict):
        return {}
    return {key: report[key] for key in BUNDLE_REPORT_SECTIONS if report.get(key) not in (None, [], {})}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _layer_sensitivity(
    table: dict[str, Any], name: str, wbits: int | None, abits: int | None, form: str | None = None
) -> float | None:
    """Predicted loss increase of a layer at its chosen bits from the sensitivity table
    (``table.weight[layer][wbits] + table.act[layer][abits]``; a missing side counts as 0). Tables of a runtime
    target (``onnxruntime-cpu``) are keyed by form name: ``form_weight[layer][form] + form_act[layer][form]``."""
    if table.get("target", "sim") != "sim":
        if form is None:
            return None
        sides = (("form_weight", form), ("form_act", form))
    else:
        sides = (("weight", str(wbits)), ("act", str(abits)))
    parts = [_number(((table.get(key) or {}).get(name) or {}).get(entry)) for key, entry in sides]
    known = [part for part in parts if part is not None]
    return sum(known) if known else None


def _layers(job_id: uuid.UUID, result: dict[str, Any]) -> list[JobLayer]:
    """Per-layer rows from the result's ``allocation`` (``{layer: {"wbits", "abits", ...}}``) and sensitivity."""
    allocation = result.get("allocation") or {}
    sensitivity = result.get("sensitivity") or {}
    table = sensitivity.get("table") if isinstance(sensitivity, dict) else None
    table = table if isinstance(table, dict) else {}
    components = table.get("components") or {}
    rows = []
    for position, (name, entry) in enumerate(allocation.items()):
        entry = entry if isinstance(entry, dict) else {}
        wbits, abits = _number(entry.get("wbits")), _number(entry.get("abits"))
        wbits_int = int(wbits) if wbits is not None else None
        abits_int = int(abits) if abits is not None else None
        details = {key: item for key, item in entry.items() if key not in {"wbits", "abits"}}
        if name in components:
            details.setdefault("component", components[name])
        rows.append(
            JobLayer(
                job_id=job_id,
                name=str(name)[:200],
                position=position,
                wbits=wbits_int,
                abits=abits_int,
                sensitivity=_layer_sensitivity(table, name, wbits_int, abits_int,
                                               entry.get("form") if isinstance(entry.get("form"), str) else None),
                details=jsonable(details),
            )
        )
    return rows


@dataclass
class _Run:
    """State of one run of one job in this process."""

    job_id: uuid.UUID
    lease_id: str
    session_factory: sessionmaker[Session]
    settings: Settings
    shutdown: threading.Event
    cancel: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    stop_heartbeat: threading.Event = field(default_factory=threading.Event)
    current_stage: str | None = None
    tracker: ProgressTracker | None = None
    last_write: float = 0.0
    thread: threading.Thread | None = None
    redactor: Redactor = field(default_factory=Redactor)
    spec: JobCreate | None = None

    # -- heartbeat ---------------------------------------------------------------------------------------------
    def _beat(self) -> None:
        with session_scope(self.session_factory) as session:
            repository = JobRepository(session)
            alive = repository.touch(self.job_id, self.lease_id)
            cancel = repository.cancel_requested(self.job_id)
            session.commit()
        if not alive:
            self.lease_lost.set()
        if cancel:
            self.cancel.set()

    def _heartbeat_loop(self) -> None:
        while not self.stop_heartbeat.wait(self.settings.heartbeat_interval):
            try:
                self._beat()
            except Exception:
                logger.warning("job %s: heartbeat failed", self.job_id, exc_info=True)
            if self.lease_lost.is_set():
                return

    def start_heartbeat(self) -> None:
        self._beat()
        self.thread = threading.Thread(
            target=self._heartbeat_loop, name=f"heartbeat-{self.job_id}", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stop_heartbeat.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    # -- pipeline callbacks ------------------------------------------------------------------------------------
    def should_cancel(self) -> bool:
        return self.cancel.is_set() or self.lease_lost.is_set() or self.shutdown.is_set()

    def progress(self, stage: str, fraction: float, message: str) -> None:
        if self.lease_lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost")
        now = time.monotonic()
        changed = stage != self.current_stage
        if not changed and now - self.last_write < PROGRESS_WRITE_INTERVAL:
            return
        with session_scope(self.session_factory) as session:
            repository = JobRepository(session)
            if self.tracker is None:  # monotone across resumes: start from the stored progress
                self.tracker = ProgressTracker(start=float(repository.progress_of(self.job_id)))
            fraction, eta = self.tracker.update(fraction)
            if not repository.touch(
                self.job_id, self.lease_id, stage=stage[:32], progress=fraction, message=str(message)[:2000]
            ):
                session.rollback()
                self.lease_lost.set()
                raise LeaseLost(f"job {self.job_id}: lease lost")
            if changed:
                repository.start_stage(self.job_id, stage, utcnow())
                record_stage(session, self.job_id, stage[:32], "started")
            record_progress(
                session,
                self.job_id,
                stage=stage[:32],
                progress=fraction,
                eta_seconds=eta,
                message=str(message)[:500],
            )
            session.commit()
        self.current_stage = stage
        self.last_write = now

    # -- outcomes ----------------------------------------------------------------------------------------------
    def finish(self, status: JobStatus, *, message: str, **values: Any) -> bool:
        now = utcnow()
        with session_scope(self.session_factory) as session:
            repository = JobRepository(session)
            layers = values.pop("layers", None)
            if not repository.touch(
                self.job_id, self.lease_id, status=status, message=message[:2000], finished_at=now, **values
            ):
                session.rollback()
                return False
            if status == JobStatus.SUCCEEDED:
                repository.close_open_stages(self.job_id, now)
                repository.replace_layers(self.job_id, layers or [])
            else:
                repository.reset_running_stages(self.job_id)
            record_status(session, self.job_id, status, message[:2000], error=values.get("error"))
            session.commit()
        return True

    def requeue(self, message: str) -> bool:
        with session_scope(self.session_factory) as session:
            done = JobRepository(session).requeue(self.job_id, lease_id=self.lease_id, message=message)
            session.commit()
        return done


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
    run = _Run(job_id, lease_id, session_factory, settings, shutdown or threading.Event())
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
        _check_worker_device(config.device)
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
        for key, section in _bundle_sections(output_dir).items():
            result_dict.setdefault(key, section)
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
            layers=_layers(job_id, result_dict),
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
        return _handle_failure(run, pipeline, exc)
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


def _check_worker_device(device: str) -> None:
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


def _out_of_memory_error(run: _Run) -> dict[str, Any]:
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


def _handle_failure(run: _Run, pipeline: Any, exc: Exception) -> JobStatus | None:
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
