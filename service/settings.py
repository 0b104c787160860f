"""Service settings: one pydantic-settings class read from ``MPQ_*`` environment variables.

Defaults make ``mpq serve`` work out of the box on one machine: a SQLite file and an artifact folder in a stable
data directory (``MPQ_HOME``, else ``$XDG_DATA_HOME/mpq``, else ``~/.local/share/mpq``; the same wherever the
command starts), the embedded worker, and the API on loopback only.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_home", "get_settings"]


def default_home() -> Path:
    """The data directory when ``MPQ_HOME`` is not set: ``$XDG_DATA_HOME/mpq`` or ``~/.local/share/mpq``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "mpq"


class Settings(BaseSettings):
    """All knobs of the API, the workers and the ``mpq`` client commands.

    Every field is read from ``MPQ_<FIELD>`` (case-insensitive), e.g. ``MPQ_DATABASE_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="MPQ_", extra="ignore")

    #: Data directory of the defaults below (``MPQ_HOME``); absolute, independent of the working directory.
    home: Path = Field(default_factory=default_home)
    #: SQLAlchemy URL. Default ``sqlite:///<home>/mpq.db``; PostgreSQL as ``postgresql+psycopg://user@host/db``.
    database_url: str = ""
    #: Folder holding uploaded artifacts (content-addressed blobs) and job folders. Default ``<home>/artifacts``.
    artifact_dir: Path = Path("")
    #: Root for image folders that jobs may reference as data (``data.folder``), resolved on the worker.
    data_root: Path | None = None
    #: Celery broker (``redis://...`` or ``amqp://...``). Empty: jobs run in the embedded worker process.
    broker_url: str = ""
    #: Celery queue the API sends jobs to and ``mpq worker`` consumes.
    celery_queue: str = "quantize"
    #: Seconds an unacknowledged job message stays invisible on Redis before redelivery (longer than any job).
    broker_visibility_timeout: int = Field(default=7 * 24 * 3600, ge=60)
    #: Largest accepted upload, in bytes (413 beyond it).
    max_upload_bytes: int = Field(default=1 << 30, ge=1)
    #: Largest body of every other request (JSON), in bytes (413 ``body_too_large`` beyond it).
    max_json_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: Run ``alembic upgrade head`` when the API starts; when false, refuse to start on an outdated schema.
    auto_migrate: bool = True
    #: Start the embedded worker process with the API (ignored when ``broker_url`` is set).
    embedded_worker: bool = True
    #: Seconds between polls of the job table by an idle embedded worker.
    worker_poll_interval: float = Field(default=0.5, gt=0)
    #: Seconds between heartbeats of a running job (also how often cancellation requests are noticed).
    heartbeat_interval: float = Field(default=1.0, gt=0)
    #: A running job whose heartbeat is older than this many seconds is considered orphaned and re-queued.
    heartbeat_timeout: float = Field(default=60.0, gt=0)
    #: Torch intra-op threads in a worker (0: automatic; the embedded worker leaves one core to the API).
    worker_threads: int = Field(default=0, ge=0)
    #: Niceness added to the embedded worker process so that the API stays responsive while jobs compute.
    worker_nice: int = Field(default=10, ge=0, le=19)
    #: Upper bound of the time limit a ``POST /v1/allocate`` request may ask for, in seconds.
    allocate_max_time_limit: float = Field(default=30.0, gt=0)

    # ---- hardening: the worker's device and upper bounds of a job request (422 ``limit_exceeded`` beyond) --------
    #: Device of the workers: ``cpu``, ``cuda`` (each worker sees one GPU through CUDA_VISIBLE_DEVICES) or
    #: ``auto`` (CUDA when the process sees one). Jobs asking for a device the workers cannot serve get a 422.
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda)$")
    #: Largest ``method.reconstruct_iters`` (iterations per block) a job may ask for.
    max_reconstruct_iters: int = Field(default=50_000, ge=1)
    #: Largest ``method.iterative_rounds`` (LampQ allocation rounds).
    max_iterative_rounds: int = Field(default=10, ge=0)
    #: Largest ``method.reconstruct_rank`` (FIMA-Q low-rank Fisher rank k).
    max_reconstruct_rank: int = Field(default=64, ge=1)
    #: Largest ``data.num_calibration`` (calibration images).
    max_calibration_images: int = Field(default=4096, ge=1)
    #: Largest ``method.sweep_measure`` (Pareto points of an ``onnxruntime-cpu`` sweep exported and timed on the
    #: worker, each an ONNX export plus an onnxruntime session).
    max_sweep_measure: int = Field(default=16, ge=0)
    #: Address ``mpq serve`` binds to (loopback by default) and port.
    host: str = "127.0.0.1"
    port: int = 8000
    #: Base URL and key used by ``mpq submit/status/download``.
    api_url: str = "http://127.0.0.1:8000"
    api_key: str = ""
    log_level: str = "info"

    # ---- MLOps integration (webhooks, idempotency, events, tracking, metrics) --------------------------------
    #: Seconds an ``Idempotency-Key`` is remembered (24 h).
    idempotency_ttl: float = Field(default=24 * 3600.0, gt=0)
    #: Accept webhook URLs on private, loopback and link-local addresses (off: only public targets).
    webhook_allow_private: bool = False
    #: Run the webhook delivery loop in the API process.
    webhook_worker: bool = True
    #: Seconds between polls of the delivery outbox.
    webhook_poll_interval: float = Field(default=1.0, gt=0)
    #: Retry delay after the n-th failed attempt: ``min(base * 2**(n-1), max)`` seconds, times a random
    #: factor in [0.5, 1.0] (full-range jitter halves synchronized retries). 30 s .. 1 h over 16 attempts ~ 9 h.
    webhook_backoff_base: float = Field(default=30.0, gt=0)
    webhook_backoff_max: float = Field(default=3600.0, gt=0)
    #: Attempts of one delivery before it is marked failed.
    webhook_max_attempts: int = Field(default=16, ge=1)
    #: Seconds an endpoint may keep failing (every attempt since its last success failed) before it is disabled;
    #: the tenant re-enables it. 3 days, like the common webhook services: a period, not a count of attempts,
    #: so an outage of minutes during a burst of events never disables an endpoint.
    webhook_disable_after_seconds: float = Field(default=3 * 24 * 3600.0, gt=0)
    #: Seconds the receiver has to answer one delivery.
    webhook_timeout: float = Field(default=10.0, gt=0)
    #: Log lines kept per job (``GET /v1/jobs/{id}/logs``); later lines are dropped.
    job_log_max_lines: int = Field(default=2000, ge=0)
    #: When set, ``GET /metrics`` requires ``Authorization: Bearer <token>``.
    metrics_token: str = ""
    #: MLflow tracking server; empty: no tracking.
    mlflow_tracking_uri: str = ""
    #: Experiment name; ``{tenant}`` is replaced by the tenant name.
    mlflow_experiment: str = "mpq-{tenant}"
    #: When set, each succeeded job's bundle is registered as a version of this model.
    mlflow_register_model: str = ""

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'mpq.db'}"
        if str(self.artifact_dir) in ("", "."):
            self.artifact_dir = self.home / "artifacts"
        return self

    @property
    def embedded(self) -> bool:
        """True when jobs run in the embedded worker process rather than on Celery workers."""
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
