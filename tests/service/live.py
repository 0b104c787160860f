"""An app served by a real uvicorn server in a thread (real HTTP for streaming tests), and a job driver that
moves a job through the worker's own code paths (claim, progress, stage checkpoints, finish) on a recorded
timeline: the ETAs it produces are fixed numbers, whatever the speed of the machine."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.events.progress import ProgressTracker
from service.job.repository import JobRepository
from service.models import JobStatus
from service.settings import Settings
from service.worker.job_run import JobRun
from service.worker.store import DBStageStore
from tests.waiting import wait_until

from .server import free_port

__all__ = ["REPORTED", "REPORTS", "LiveServer", "RecordedTracker", "drive_job"]


class LiveServer:
    """``with LiveServer(settings) as live: live.url, live.app``."""

    def __init__(self, settings: Settings) -> None:
        self.app: FastAPI = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        wait_until(self._started, 120, interval=0.02, message="uvicorn to start")
        return self

    def _started(self) -> bool:
        if not self.thread.is_alive():
            raise RuntimeError("uvicorn stopped while starting")
        return self.server.started

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


#: A recorded run: (seconds since the run started, stage, fraction the pipeline reported, message).
REPORTS: list[tuple[float, str, float, str]] = [
    (1.0, "load", 0.02, "loading"),
    (10.0, "sensitivity", 0.10, "sensitivity 1/4"),
    (12.0, "sensitivity", 0.08, "a report going backwards"),
    (20.0, "sensitivity", 0.30, "sensitivity 4/4"),
]
#: The progress events ``REPORTS`` give: (progress, eta_seconds). Progress never goes back; no ETA in the first
#: 2 s; after that (1 - progress) * elapsed / progress: 0.9 * 10 / 0.1, 0.9 * 12 / 0.1, 0.7 * 20 / 0.3.
REPORTED: list[tuple[float, float | None]] = [(0.02, None), (0.1, 90.0), (0.1, 108.0), (0.3, 46.7)]


@dataclass
class RecordedTracker(ProgressTracker):
    """A :class:`ProgressTracker` that reads the time of each report from ``now`` instead of the wall clock."""

    now: float = 0.0

    def update(self, fraction: float, now: float | None = None) -> tuple[float, float | None]:
        return super().update(fraction, self.now if now is None else now)


def drive_job(app: FastAPI, job_id: uuid.UUID, workdir: Path) -> None:
    """Run ``job_id`` to success through the worker's code: claim, the progress reports of ``REPORTS`` at their
    recorded times (one going backwards), a stage checkpoint, finish."""
    factory = app.state.session_factory
    settings = app.state.settings
    with factory() as session:
        assert JobRepository(session).claim(job_id, worker_id="test-worker", lease_id="lease")
        session.commit()
    run = JobRun(job_id, "lease", factory, settings, threading.Event())
    run.tracker = tracker = RecordedTracker(start=0.0, clock=0.0)
    store = DBStageStore(job_id, "lease", factory, workdir)
    for seconds, stage, fraction, message in REPORTS:
        if stage == "sensitivity" and run.current_stage == "load":
            store.save("load", {"ok": True})
        run.last_write = float("-inf")  # no write throttling in the test
        tracker.now = seconds
        run.progress(stage, fraction, message)
    assert run.finish(JobStatus.SUCCEEDED, message="done", progress=1.0)
