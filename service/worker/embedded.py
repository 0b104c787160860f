"""The embedded worker: a separate process started next to the API (``mpq serve``) when no broker is set.

The API process stays free for requests while this process runs jobs one at a time. It polls the job table for
queued jobs and claims them atomically, so several API processes on one database never run a job twice. On
start it re-queues jobs left ``running`` by dead embedded workers of this host (e.g. after the server was
killed); they resume from their last finished stage. The process dies with its parent (``PR_SET_PDEATHSIG`` on
Linux, plus a parent-pid watchdog) and, on SIGTERM, stops its job at the next stage boundary or cancellation
check and re-queues it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from service.db import make_engine, make_session_factory, session_scope
from service.job.repository import JobRepository
from service.settings import Settings
from service.worker.recovery import recover_dead_local_workers, recover_stale_jobs
from service.worker.runner import execute_job, make_worker_id

__all__ = ["EmbeddedWorker", "main", "run_worker_loop"]

logger = logging.getLogger("mpq.worker")

_SETTINGS_ENV = "MPQ__EMBEDDED_WORKER_SETTINGS"
_PARENT_ENV = "MPQ__EMBEDDED_WORKER_PARENT"
#: Seconds between sweeps for jobs with a stale heartbeat.
REAP_INTERVAL = 10.0


class EmbeddedWorker:
    """Starts and stops the worker process from the API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env[_SETTINGS_ENV] = self.settings.model_dump_json()
        env[_PARENT_ENV] = str(os.getpid())
        self.process = subprocess.Popen([sys.executable, "-m", "service.worker.embedded"], env=env)
        logger.info("embedded worker started (pid %s)", self.process.pid)

    def stop(self, timeout: float = 30.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watchdog() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def run_worker_loop(settings: Settings, shutdown: threading.Event) -> None:
    """Poll for queued jobs and run them until ``shutdown`` is set."""
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    worker_id = make_worker_id("embedded")
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    import torch

    torch.set_num_threads(settings.worker_threads or max(1, (os.cpu_count() or 2) - 1))
    recover_dead_local_workers(session_factory, "embedded")
    last_reap = 0.0
    logger.info("embedded worker %s polling %s", worker_id, engine.url.render_as_string(hide_password=True))
    try:
        while not shutdown.is_set():
            if time.monotonic() - last_reap > REAP_INTERVAL:
                recover_stale_jobs(session_factory, settings.heartbeat_timeout)
                last_reap = time.monotonic()
            with session_scope(session_factory) as session:
                candidates = JobRepository(session).next_queued(limit=5)
            ran = False
            for job_id in candidates:
                if shutdown.is_set():
                    break
                status = execute_job(
                    job_id,
                    session_factory=session_factory,
                    settings=settings,
                    worker_id=worker_id,
                    shutdown=shutdown,
                )
                if status is not None:
                    ran = True
                    break
            if not ran:
                shutdown.wait(settings.worker_poll_interval)
    finally:
        engine.dispose()


def main() -> None:
    """Entry point of the worker process (``python -m service.worker.embedded``)."""
    settings = Settings.model_validate(json.loads(os.environ[_SETTINGS_ENV]))
    parent = os.environ.get(_PARENT_ENV)
    if parent:
        _die_with_parent(int(parent))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        stream=sys.stderr,
    )
    shutdown = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: shutdown.set())
    signal.signal(signal.SIGINT, lambda *_: shutdown.set())
    run_worker_loop(settings, shutdown)


if __name__ == "__main__":
    main()
