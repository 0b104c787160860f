"""Write job events (and their webhook outbox rows) inside the caller's transaction.

Every status change of a job goes through :func:`record_status` in the same session (and commit) as the change
itself, so the event stream, the webhook outbox and the job row never disagree.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Job, JobEvent
from service.webhooks.outbox import enqueue_event

__all__ = ["TERMINAL_EVENT_TYPES", "record_log_lines", "record_progress", "record_stage", "record_status"]

#: Webhook event type of each terminal status.
TERMINAL_EVENT_TYPES = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}


def _job_head(session: Session, job_id: uuid.UUID) -> tuple[uuid.UUID, str, uuid.UUID | None] | None:
    row = session.execute(select(Job.tenant_id, Job.name, Job.parent_id).where(Job.id == job_id)).first()
    return (row[0], row[1], row[2]) if row is not None else None


def record_status(
    session: Session,
    job_id: uuid.UUID,
    status: str,
    message: str = "",
    *,
    error: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """A ``status`` event; for terminal statuses also the ``job.<status>`` webhook deliveries."""
    status = str(getattr(status, "value", status))
    data: dict[str, Any] = {"status": status, "message": message, **(extra or {})}
    if error is not None:
        data["error"] = {"code": error.get("code"), "message": error.get("message")}
    session.add(JobEvent(job_id=job_id, kind="status", data=data))
    event_type = TERMINAL_EVENT_TYPES.get(status)
    if event_type is None:
        return
    head = _job_head(session, job_id)
    if head is None:
        return
    tenant_id, name, parent_id = head
    payload = {"job_id": str(job_id), "status": status, "name": name, "message": message}
    if parent_id is not None:
        payload["parent_id"] = str(parent_id)
    if error is not None:
        payload["error"] = data["error"]
    enqueue_event(session, tenant_id, event_type, payload)


def record_stage(
    session: Session, job_id: uuid.UUID, stage: str, state: str, *, seconds: float | None = None
) -> None:
    """A ``stage`` event (``state``: started, finished, skipped); finished stages also go to webhooks."""
    data: dict[str, Any] = {"stage": stage, "state": state}
    if seconds is not None:
        data["seconds"] = round(seconds, 3)
    session.add(JobEvent(job_id=job_id, kind="stage", data=data))
    if state not in ("finished", "skipped"):
        return
    head = _job_head(session, job_id)
    if head is not None:
        payload = {
            "job_id": str(job_id),
            "status": "running",
            "stage": stage,
            "state": state,
            "name": head[1],
        }
        enqueue_event(session, head[0], "job.stage_completed", payload)


def record_progress(
    session: Session,
    job_id: uuid.UUID,
    *,
    stage: str,
    progress: float,
    eta_seconds: float | None,
    message: str,
) -> None:
    """A ``progress`` event (progress is the job's monotone overall fraction)."""
    session.add(
        JobEvent(
            job_id=job_id,
            kind="progress",
            data={
                "stage": stage,
                "progress": round(progress, 4),
                "eta_seconds": eta_seconds,
                "message": message,
            },
        )
    )


def record_log_lines(session: Session, job_id: uuid.UUID, lines: list[dict[str, Any]]) -> None:
    """``log`` events, one per line ``{"time", "level", "logger", "message"}``."""
    session.add_all(JobEvent(job_id=job_id, kind="log", data=line) for line in lines)
