"""Pydantic models of the API's responses, as the client returns them.

They mirror the OpenAPI schemas of the server (``/openapi.json``) without importing the server's code, and
accept fields added by newer servers. ``model["field"]`` works like ``model.field`` (for code written against
the earlier dict-returning client).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Artifact",
    "ArtifactPage",
    "Delivery",
    "Job",
    "JobEvent",
    "JobPage",
    "JobReport",
    "Layer",
    "LogLine",
    "Model",
    "ParetoCurve",
    "ParetoPoint",
    "Stage",
    "Webhook",
    "WebhookCreated",
]

TERMINAL = ("succeeded", "failed", "cancelled")


class Model(BaseModel):
    """Base of the client's models: unknown fields are kept; ``m["x"]`` is ``m.x``."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


class Artifact(Model):
    """An uploaded safetensors file."""

    id: str
    kind: str
    sha256: str
    size: int
    filename: str
    tensors: dict[str, Any]
    created_at: dt.datetime


class Stage(Model):
    name: str
    status: str
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    reused_from: str | None = None
    output: dict[str, Any] | None = None


class Job(Model):
    """A job; the detail fields (``spec``, ``stages``, bundle) are None in list pages."""

    id: str
    name: str
    status: str
    parent_id: str | None = None
    progress: float
    stage: str | None = None
    message: str
    cancel_requested: bool = False
    error: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    warnings: list[dict[str, Any]] | None = None
    attempts: int = 0
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    spec: dict[str, Any] | None = None
    heartbeat_at: dt.datetime | None = None
    stages: list[Stage] | None = None
    bundle_sha256: str | None = None
    bundle_size: int | None = None

    @property
    def done(self) -> bool:
        """True once the job is succeeded, failed or cancelled."""
        return self.status in TERMINAL


class JobPage(Model):
    data: list[Job]
    has_more: bool
    next_cursor: str | None = None


class ArtifactPage(Model):
    data: list[Artifact]
    has_more: bool
    next_cursor: str | None = None


class Layer(Model):
    name: str
    wbits: int | None = None
    abits: int | None = None
    sensitivity: float | None = None
    details: dict[str, Any] = {}


class JobReport(Model):
    job_id: str
    status: str
    result: dict[str, Any]
    layers: list[Layer]
    stages: list[Stage]


class ParetoPoint(Model):
    """One solved budget value of a sweep (``objective`` None when the value is infeasible)."""

    budget: str
    value: float
    objective: float | None = None
    status: str
    chosen: bool = False
    predicted_latency_ms: float | None = None
    wbits_avg: float | None = None
    forms: dict[str, int] | None = None


class ParetoCurve(Model):
    """``POST /v1/jobs/{id}/pareto``: the points of one budget's sweep, ``chosen`` = the job's own value."""

    job_id: str
    budget: str
    unit: str
    points: list[ParetoPoint]
    chosen: float | None = None


class JobEvent(Model):
    """One Server-Sent Event of ``GET /v1/jobs/{id}/events``: ``event`` is status, stage or progress."""

    id: int
    event: str
    data: dict[str, Any]


class LogLine(Model):
    id: int
    time: str
    level: str
    logger: str
    message: str


class Webhook(Model):
    id: str
    url: str
    events: list[str]
    enabled: bool
    failure_count: int
    failing_since: dt.datetime | None = None
    disabled_reason: str
    previous_secret_expires_at: dt.datetime | None = None
    created_at: dt.datetime


class WebhookCreated(Webhook):
    """An endpoint with its signing secret (after creation or a rotation)."""

    secret: str


class Delivery(Model):
    id: str
    webhook_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None = None
    last_error: str = ""
    next_attempt_at: dt.datetime | None = None
    created_at: dt.datetime
    delivered_at: dt.datetime | None = None
