"""An app served by a real uvicorn server in a thread (real HTTP for streaming tests), and a job driver that
moves a job through the worker's own code paths (claim, progress, stage checkpoints, finish)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Self

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.events.progress import ProgressTracker
from service.job.repository import JobRepository
from service.models import JobStatus
from service.settings import Settings
from service.worker.runner import _Run
from service.worker.store import DBStageStore

from .server import free_port

__all__ = ["LiveServer", "drive_job"]


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
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def drive_job(app: FastAPI, job_id: uuid.UUID, workdir: Path, *, seconds_before: float = 10.0) -> None:
    """Run ``job_id`` to success through the worker's code: claim, progress (one report going backwards),
    a stage checkpoint, finish. The run's clock starts ``seconds_before`` seconds in the past so that the ETA
    is computed from a known elapsed time."""
    factory = app.state.session_factory
    settings = app.state.settings
    with factory() as session:
        assert JobRepository(session).claim(job_id, worker_id="test-worker", lease_id="lease")
        session.commit()
    run = _Run(job_id, "lease", factory, settings, threading.Event())
    run.tracker = ProgressTracker(start=0.0, clock=time.monotonic() - seconds_before)
    store = DBStageStore(job_id, "lease", factory, workdir)
    for stage, fraction, message in [
        ("load", 0.02, "loading"),
        ("sensitivity", 0.10, "sensitivity 1/4"),
        ("sensitivity", 0.08, "a report going backwards"),
        ("sensitivity", 0.30, "sensitivity 4/4"),
    ]:
        if stage == "sensitivity" and run.current_stage == "load":
            store.save("load", {"ok": True})
        run.last_write = 0.0  # no write throttling in the test
        run.progress(stage, fraction, message)
    assert run.finish(JobStatus.SUCCEEDED, message="done", progress=1.0)
