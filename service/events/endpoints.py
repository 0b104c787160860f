"""``GET /v1/jobs/{id}/events`` (Server-Sent Events) and ``GET /v1/jobs/{id}/logs``.

The stream replays the job's events from the start (or after ``Last-Event-ID``), then follows new ones and
closes after the terminal status event. Event names: ``status`` (status, message, error), ``stage`` (stage,
state, seconds) and ``progress`` (overall progress 0..1, never decreasing; ``eta_seconds`` from the rate measured
in this run; message). Each event's id is its position in the job's event log.

Resuming: ``Last-Event-ID`` must be the id of one of the job's events (422 ``unknown_last_event_id`` otherwise:
the server never invents an event for an id it did not send). A client resuming after the terminal event gets
``204 No Content``, which tells an ``EventSource`` to stop reconnecting; nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from service.auth.dependencies import TenantDep
from service.deps import SessionDep
from service.errors import NotFound, UnprocessableEntity
from service.events.stream import event_of_job, fetch_events, fetch_logs
from service.models import Job
from service.schemas import error_responses

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

TERMINAL = ("succeeded", "failed", "cancelled")
#: Seconds between two reads of the event log while a stream is idle.
POLL_SECONDS = 0.25
#: Seconds between keep-alive comments on an idle stream.
PING_SECONDS = 15


class LogLine(BaseModel):
    id: int
    time: str
    level: str
    logger: str
    message: str


class JobLogs(BaseModel):
    """Stored log lines of a job (bounded by ``MPQ_JOB_LOG_MAX_LINES`` per run), oldest first."""

    data: list[LogLine]
    next_after: int | None


def _own_job(session: SessionDep, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found", code="job_not_found")


def _parse_last_event_id(value: str | None) -> int:
    """The id a client resumes after (0: from the start); 422 for anything but a non-negative integer."""
    if not value:
        return 0
    try:
        parsed = int(value)
    except ValueError:
        parsed = -1
    if parsed < 0:
        raise UnprocessableEntity(
            f"Last-Event-ID must be the id of an event of this stream, got {value[:40]!r}",
            code="unknown_last_event_id",
        )
    return parsed


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        204: {"description": "Nothing after Last-Event-ID: the job has ended and its terminal event was sent"},
        **error_responses(404),
    },
    summary="Follow a job live (Server-Sent Events)",
)
async def job_events(
    job_id: uuid.UUID,
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
) -> Response:
    """Status, stage and progress events (with ETA); resumable with ``Last-Event-ID``; ends at a terminal state."""
    await run_in_threadpool(_own_job, session, tenant.id, job_id)
    await run_in_threadpool(session.close)  # the stream uses its own short sessions
    factory = request.app.state.session_factory
    start = _parse_last_event_id(last_event_id)
    if start and not await run_in_threadpool(event_of_job, factory, job_id, start):
        raise UnprocessableEntity(
            f"Last-Event-ID {start} is not an event of job {job_id}; omit it to replay the stream from the start",
            code="unknown_last_event_id",
        )
    first = await run_in_threadpool(fetch_events, factory, job_id, start)
    if start and not first.events and first.status in TERMINAL:
        return Response(status_code=204)  # resumed after the end: nothing more will come

    async def stream() -> AsyncIterator[ServerSentEvent]:
        last, batch = start, first
        while True:
            for event_id, kind, data, created_at in batch.events:
                last = event_id
                yield ServerSentEvent(
                    data=json.dumps({**data, "time": created_at}), event=kind, id=str(event_id)
                )
                if kind == "status" and data.get("status") in TERMINAL:
                    return
            if batch.status is None:  # deleted meanwhile
                return
            if not batch.events and batch.status in TERMINAL:
                # a job that ended before it had an event log (older rows): its status once, without an id
                data = {"status": batch.status, "message": batch.message, "progress": batch.progress}
                yield ServerSentEvent(data=json.dumps(data), event="status")
                return
            if not batch.events:
                if await request.is_disconnected():
                    return
                await asyncio.sleep(POLL_SECONDS)
            batch = await run_in_threadpool(fetch_events, factory, job_id, last)

    return EventSourceResponse(stream(), ping=PING_SECONDS, headers={"Cache-Control": "no-store"})


@router.get(
    "/{job_id}/logs", response_model=JobLogs, responses=error_responses(404), summary="A job's log lines"
)
def job_logs(
    job_id: uuid.UUID,
    tenant: TenantDep,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="next_after of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> JobLogs:
    """The worker's log lines for this job (server paths redacted), oldest first."""
    _own_job(session, tenant.id, job_id)
    rows = fetch_logs(session, job_id, after=after, limit=limit)
    lines = [
        LogLine(
            id=row_id,
            time=str(line.get("time", "")),
            level=str(line.get("level", "")),
            logger=str(line.get("logger", "")),
            message=str(line.get("message", "")),
        )
        for row_id, line in rows
    ]
    return JobLogs(data=lines, next_after=lines[-1].id if len(lines) == limit else None)
