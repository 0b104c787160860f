"""One run of one job in a worker process: its lease heartbeat, its progress writes and its outcome.

A :class:`JobRun` holds a job's lease (``lease_id``) for as long as the pipeline runs: a heartbeat thread keeps
the lease alive and notices cancellation requests, :meth:`JobRun.progress` records progress and stage starts
(and stops the run with :class:`~service.worker.store.LeaseLost` when another worker took the job over), and
:meth:`JobRun.finish` / :meth:`JobRun.requeue` write the outcome only while the lease is still held.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope, utcnow
from service.events.progress import ProgressTracker
from service.events.recorder import record_progress, record_stage, record_status
from service.job.repository import JobRepository
from service.job.schemas import JobCreate
from service.models import JobStatus
from service.redact import Redactor
from service.settings import Settings
from service.worker.store import LeaseLost

__all__ = ["PROGRESS_WRITE_INTERVAL", "JobRun"]

logger = logging.getLogger("mpq.worker")

#: Minimum seconds between two progress writes within one stage.
PROGRESS_WRITE_INTERVAL = 0.5


@dataclass
class JobRun:
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
