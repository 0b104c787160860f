"""Typed Python client of the mpq API (sync :class:`MPQClient` and async :class:`AsyncMPQClient`, httpx).

    from service.client import MPQClient

    with MPQClient("http://127.0.0.1:8000", key) as mpq:
        job = mpq.submit({"model": {"name": "builtin:vit-digits"}, "method": {"wbits": 4}})
        job = mpq.wait(job.id)            # follows GET /v1/jobs/{id}/events
        mpq.download(job.id, "out/")      # sha256-checked

Responses are pydantic models (:mod:`service.client.models`); errors are typed (:mod:`service.client.errors`).
"""

from service.client.async_client import AsyncMPQClient
from service.client.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ChecksumMismatch,
    ConflictError,
    IdempotencyKeyReused,
    IdempotencyRequestInProgress,
    JobNotFinished,
    JobNotFound,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
)
from service.client.models import (
    Artifact,
    ArtifactPage,
    Delivery,
    Job,
    JobEvent,
    JobPage,
    JobReport,
    Layer,
    LogLine,
    ParetoCurve,
    ParetoPoint,
    Stage,
    Webhook,
    WebhookCreated,
)
from service.client.sync import MPQClient

__all__ = [
    "APIError",
    "Artifact",
    "ArtifactPage",
    "AsyncMPQClient",
    "AuthenticationError",
    "BadRequestError",
    "ChecksumMismatch",
    "ConflictError",
    "Delivery",
    "IdempotencyKeyReused",
    "IdempotencyRequestInProgress",
    "Job",
    "JobEvent",
    "JobNotFinished",
    "JobNotFound",
    "JobPage",
    "JobReport",
    "Layer",
    "LogLine",
    "MPQClient",
    "NotFoundError",
    "ParetoCurve",
    "ParetoPoint",
    "PayloadTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "Stage",
    "ValidationError",
    "Webhook",
    "WebhookCreated",
]
