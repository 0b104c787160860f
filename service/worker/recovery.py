"""Find running jobs whose worker is gone and put them back in the queue (or fail them after too many tries).

Two signals: an embedded worker starting on a host re-queues jobs of dead embedded workers of that host (their
pid no longer exists), and any worker periodically re-queues jobs whose heartbeat is older than
``MPQ_HEARTBEAT_TIMEOUT``. Both are compare-and-set on the lease, so a job is never re-queued twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope, utcnow
from service.job.repository import JobRepository

__all__ = ["MAX_ATTEMPTS", "pid_alive", "recover_dead_local_workers", "recover_stale_jobs"]

logger = logging.getLogger("mpq.worker")

#: A job whose worker died this many times is failed instead of re-queued (it probably kills its worker).
MAX_ATTEMPTS = 3


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _recover(
    session_factory: sessionmaker[Session],
    rows: list[tuple[uuid.UUID, str | None, str | None, int]],
    keep: Callable[[str | None], bool],
    reason: str,
) -> list[uuid.UUID]:
    requeued: list[uuid.UUID] = []
    for job_id, worker_id, lease_id, attempts in rows:
        if keep(worker_id) or lease_id is None:
            continue
        with session_scope(session_factory) as session:
            repository = JobRepository(session)
            if attempts >= MAX_ATTEMPTS:
                message = f"the job's worker died {attempts} times ({reason}); giving up"
                done = repository.fail_orphan(
                    job_id,
                    lease_id=lease_id,
                    error={"code": "worker_lost", "message": message, "details": {"attempts": attempts}},
                )
            else:
                done = repository.requeue(
                    job_id,
                    lease_id=lease_id,
                    message=f"re-queued: {reason}; resumes from its last finished stage",
                )
            session.commit()
        if done:
            logger.warning("job %s: worker %s lost (%s)", job_id, worker_id, reason)
            if attempts < MAX_ATTEMPTS:
                requeued.append(job_id)
    return requeued


def recover_dead_local_workers(session_factory: sessionmaker[Session], kind: str) -> list[uuid.UUID]:
    """Re-queue running jobs of ``kind`` workers on this host whose process no longer exists."""
    prefix = f"{kind}:{socket.gethostname()}:"
    with session_scope(session_factory) as session:
        rows = JobRepository(session).running_jobs(worker_prefix=prefix)

    def alive(worker_id: str | None) -> bool:
        try:
            return pid_alive(int((worker_id or "").rsplit(":", 1)[1]))
        except (IndexError, ValueError):
            return False

    return _recover(session_factory, rows, alive, "its worker process exited")


def recover_stale_jobs(session_factory: sessionmaker[Session], timeout_s: float) -> list[uuid.UUID]:
    """Re-queue running jobs whose heartbeat is older than ``timeout_s`` seconds."""
    before = utcnow() - dt.timedelta(seconds=timeout_s)
    with session_scope(session_factory) as session:
        rows = JobRepository(session).running_jobs(heartbeat_before=before)
    return _recover(session_factory, rows, lambda _worker: False, f"no heartbeat for {timeout_s:g}s")
