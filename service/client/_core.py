"""What the sync and async clients share: request shapes, response parsing, event folding, archive checks."""

from __future__ import annotations

import datetime as dt
import uuid
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from service.client.errors import APIError, error_for
from service.client.models import Job, JobEvent

__all__ = ["apply_event", "check_archive", "job_filters", "new_idempotency_key", "pareto_body", "parse"]

M = TypeVar("M", bound=BaseModel)


def new_idempotency_key() -> str:
    """A fresh key for one logical submit (reused by the client's own retries of that submit)."""
    return str(uuid.uuid4())


def parse(response: httpx.Response, model: type[M]) -> M:
    """The response body as ``model``; the typed :class:`APIError` subclass for error statuses."""
    raise_for_error(response)
    return model.model_validate(response.json())


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_for(response.status_code, body, response.text)


def _iso(value: dt.datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def job_filters(**filters: Any) -> dict[str, Any]:
    """Query parameters of ``GET /v1/jobs`` without the unset ones (datetimes as ISO 8601)."""
    return {key: _iso(value) for key, value in filters.items() if value is not None}


def pareto_body(
    budget: str, points: int, values: list[float] | None, time_limit: float | None
) -> dict[str, Any]:
    """The body of ``POST /v1/jobs/{id}/pareto`` without the unset options."""
    body: dict[str, Any] = {"budget": budget, "points": points}
    if values is not None:
        body["values"] = [float(value) for value in values]
    if time_limit is not None:
        body["time_limit"] = time_limit
    return body


def apply_event(job: Job, event: JobEvent) -> Job:
    """``job`` updated with what an event says (status, stage, progress, message)."""
    data = event.data
    update: dict[str, Any] = {}
    if event.event == "status":
        update["status"] = data.get("status", job.status)
        update["message"] = data.get("message", job.message)
        if data.get("error"):
            update["error"] = data["error"]
        if update["status"] == "succeeded":
            update["progress"] = 1.0
    elif event.event == "progress":
        update["progress"] = max(job.progress, float(data.get("progress", job.progress)))
        update["stage"] = data.get("stage", job.stage)
        update["message"] = data.get("message", job.message)
    elif event.event == "stage":
        update["stage"] = data.get("stage", job.stage)
    return job.model_copy(update=update)


def check_archive(path: Path, destination: Path) -> None:
    """Refuse a zip whose members would land outside ``destination``."""
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            target = (destination / member).resolve()
            if not target.is_relative_to(destination.resolve()):
                raise APIError(200, "unsafe_archive", f"refusing to extract {member!r} outside {destination}")
