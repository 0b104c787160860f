"""Celery scale-out: the API enqueues job ids, ``mpq worker`` processes run them (one job at a time each).

The job row stays the source of truth; the broker only carries ids:

- Messages are acknowledged late (after the job ends) with prefetch 1, and re-queued by the broker when a worker
  is lost (``task_reject_on_worker_lost``). A redelivered or duplicated message is harmless: the task claims the
  job with a compare-and-set on the row and does nothing when the job is not ``queued``.
- A running job keeps a heartbeat; each worker sweeps every few seconds for running jobs whose heartbeat is older
  than ``MPQ_HEARTBEAT_TIMEOUT``, re-queues them in the database (lease-guarded, so only one sweeper wins) and
  re-sends their id. The job resumes from its finished stages and reconstruction checkpoints (``work/`` in the
  shared artifact store).
- Redis redelivers unacknowledged messages after ``visibility_timeout``; it is set to a week
  (``MPQ_BROKER_VISIBILITY_TIMEOUT``) so a healthy long job is not handed to a second worker. Were it redelivered
  anyway, the claim would refuse it. With RabbitMQ, raise the server's ``consumer_timeout`` above the longest job.
- Cancellation is a flag on the row that the running worker's heartbeat thread notices within a second.
- On warm shutdown (SIGTERM) the running job stops at its next cancellation check, goes back to ``queued`` with
  its checkpoints, and its id is re-sent for another worker.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from typing import Any

from celery import Celery, signals
from kombu import Queue

from service.db import make_engine, make_session_factory
from service.models import JobStatus
from service.settings import Settings, get_settings
from service.worker.recovery import recover_stale_jobs
from service.worker.runner import execute_job, make_worker_id

__all__ = ["TASK_NAME", "CeleryDispatcher", "make_celery", "run_celery_worker"]

logger = logging.getLogger("mpq.worker")

TASK_NAME = "mpq.run_job"
#: Seconds between two sweeps for jobs with a stale heartbeat, per worker.
SWEEP_INTERVAL = 2.0


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (late ack, prefetch 1, one queue)."""
    app = Celery("mpq", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.celery_queue,
        task_queues=[Queue(settings.celery_queue)],
        task_routes={TASK_NAME: {"queue": settings.celery_queue}},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


class CeleryDispatcher:
    """Used by the API when ``MPQ_BROKER_URL`` is set: send the id of an accepted job to the queue."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)

    def enqueue(self, job_id: uuid.UUID) -> None:
        self.app.send_task(TASK_NAME, args=[str(job_id)])


class _WorkerState:
    """Per-process state of a Celery worker: database, shutdown flag, sweeper thread."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self.engine = make_engine(settings.database_url)
        self.session_factory = make_session_factory(self.engine)
        self.worker_id = make_worker_id("celery")
        self.shutdown = threading.Event()
        self.sweeper: threading.Thread | None = None

    def sweep_forever(self) -> None:
        while not self.shutdown.wait(SWEEP_INTERVAL):
            try:
                for job_id in recover_stale_jobs(self.session_factory, self.settings.heartbeat_timeout):
                    self.app.send_task(TASK_NAME, args=[str(job_id)])
            except Exception:
                logger.warning("stale-job sweep failed", exc_info=True)

    def start_sweeper(self) -> None:
        self.sweeper = threading.Thread(target=self.sweep_forever, name="stale-job-sweeper", daemon=True)
        self.sweeper.start()


_state: _WorkerState | None = None


def _register_task(app: Celery) -> None:
    @app.task(name=TASK_NAME, bind=True)
    def run_job(self: Any, job_id: str) -> str | None:
        state = _state
        if state is None:
            raise RuntimeError("mpq celery task outside an mpq worker")
        status = execute_job(
            uuid.UUID(job_id),
            session_factory=state.session_factory,
            settings=state.settings,
            worker_id=state.worker_id,
            shutdown=state.shutdown,
        )
        if status == JobStatus.QUEUED:  # stopped by a warm shutdown: hand it to another worker
            state.app.send_task(TASK_NAME, args=[job_id])
        return status.value if status is not None else None


def run_celery_worker(
    settings: Settings | None = None, *, concurrency: int = 1, loglevel: str = "info"
) -> int:
    """Run a worker in this process (``mpq worker``): one job at a time per process (``--pool solo``).

    A GPU worker (``MPQ_DEVICE=cuda``, or ``auto`` with a visible GPU) runs exactly one job at a time on the one
    GPU it sees: start one worker per GPU with ``CUDA_VISIBLE_DEVICES=<index>``. Returns 2 for ``concurrency > 1``
    on a GPU worker.
    """
    global _state
    settings = settings or get_settings()
    if concurrency > 1:
        from service.job.config import workers_have_cuda

        if workers_have_cuda(settings):
            logging.getLogger("mpq.worker").error(
                "a GPU worker runs one job at a time: start one `mpq worker` per GPU with "
                "CUDA_VISIBLE_DEVICES=<index> instead of --concurrency %d",
                concurrency,
            )
            return 2
    app = make_celery(settings)
    _register_task(app)
    _state = _WorkerState(settings, app)
    if settings.worker_threads:
        import torch

        torch.set_num_threads(settings.worker_threads)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_kwargs: Any) -> None:
        if _state is not None:
            _state.start_sweeper()

    @signals.worker_shutting_down.connect(weak=False)
    def _shutting_down(**_kwargs: Any) -> None:
        if _state is not None:
            _state.shutdown.set()

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    argv = [
        "worker",
        f"--queues={settings.celery_queue}",
        f"--loglevel={loglevel}",
        f"--hostname=mpq-{socket.gethostname()}-{uuid.uuid4().hex[:6]}@%h",
        "--prefetch-multiplier=1",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    argv += ["--pool=solo"] if concurrency == 1 else ["--pool=threads", f"--concurrency={concurrency}"]
    app.worker_main(argv)
    return 0
