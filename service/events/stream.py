"""Read a job's events for the SSE stream and the logs route (short sessions, one query per poll)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope
from service.models import Job, JobEvent

__all__ = ["EventBatch", "event_of_job", "fetch_events", "fetch_logs"]

#: Events read per poll.
BATCH = 200


@dataclass(frozen=True)
class EventBatch:
    """Events after a given id, and the job's status and message at the time of the read."""

    events: list[tuple[int, str, dict[str, Any], str]]  # (id, kind, data, created_at iso)
    status: str | None
    message: str
    progress: float


def fetch_events(session_factory: sessionmaker[Session], job_id: uuid.UUID, after: int) -> EventBatch:
    """Non-log events of ``job_id`` with id > ``after``, oldest first (at most :data:`BATCH`)."""
    with session_scope(session_factory) as session:
        # the job first: each statement may see a newer commit (PostgreSQL, read committed), and a job's terminal
        # status and its terminal event are committed together, so a terminal status read first guarantees its
        # event in the read that follows (events first, a job finishing between the two looked terminal with no
        # terminal event, and the stream ended on its id-less fallback)
        head = session.execute(select(Job.status, Job.message, Job.progress).where(Job.id == job_id)).first()
        rows = session.execute(
            select(JobEvent.id, JobEvent.kind, JobEvent.data, JobEvent.created_at)
            .where(JobEvent.job_id == job_id, JobEvent.id > after, JobEvent.kind != "log")
            .order_by(JobEvent.id)
            .limit(BATCH)
        ).all()
    events = [(int(row[0]), str(row[1]), dict(row[2] or {}), row[3].isoformat()) for row in rows]
    if head is None:
        return EventBatch(events, None, "", 0.0)
    return EventBatch(events, str(head[0].value), head[1], float(head[2]))


def event_of_job(session_factory: sessionmaker[Session], job_id: uuid.UUID, event_id: int) -> bool:
    """True when ``event_id`` is one of the job's stream events (what a client may resume after)."""
    with session_scope(session_factory) as session:
        found = session.scalar(
            select(JobEvent.id).where(JobEvent.id == event_id, JobEvent.job_id == job_id, JobEvent.kind != "log")
        )
    return found is not None


def fetch_logs(
    session: Session, job_id: uuid.UUID, *, after: int, limit: int
) -> list[tuple[int, dict[str, Any]]]:
    """``(id, line)`` of the job's stored log lines with id > ``after``, oldest first."""
    rows = session.execute(
        select(JobEvent.id, JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.kind == "log", JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(limit)
    ).all()
    return [(int(row[0]), dict(row[1] or {})) for row in rows]
