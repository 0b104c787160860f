"""Service settings: one pydantic-settings class read from ``MPQ_*`` environment variables.

Defaults make ``mpq serve`` work out of the box on one machine: a SQLite file and an artifact folder under
``./var/`` (relative to the working directory), the embedded worker, and the API on loopback only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """All knobs of the API, the workers and the ``mpq`` client commands.

    Every field is read from ``MPQ_<FIELD>`` (case-insensitive), e.g. ``MPQ_DATABASE_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="MPQ_", extra="ignore")

    #: SQLAlchemy URL. SQLite file by default; PostgreSQL as ``postgresql+psycopg://user@host/db``.
    database_url: str = "sqlite:///./var/mpq.db"
    #: Folder holding uploaded artifacts (content-addressed blobs) and job folders (checkpoints, bundles).
    artifact_dir: Path = Path("./var/artifacts")
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
    #: Address ``mpq serve`` binds to (loopback by default) and port.
    host: str = "127.0.0.1"
    port: int = 8000
    #: Base URL and key used by ``mpq submit/status/download``.
    api_url: str = "http://127.0.0.1:8000"
    api_key: str = ""
    log_level: str = "info"

    @property
    def embedded(self) -> bool:
        """True when jobs run in the embedded worker process rather than on Celery workers."""
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
