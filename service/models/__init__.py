"""ORM models of the service (SQLAlchemy 2, ``Mapped[...]``). Import from here; Alembic reads ``Base.metadata``."""

from service.db import Base
from service.models.artifact import Artifact, ArtifactKind
from service.models.event import JobEvent
from service.models.idempotency import IdempotencyRecord
from service.models.job import Job, JobLayer, JobStage, JobStatus, StageStatus
from service.models.tenant import APIKey, Tenant
from service.models.webhook import DeliveryStatus, WebhookDelivery, WebhookEndpoint

__all__ = [
    "APIKey",
    "Artifact",
    "ArtifactKind",
    "Base",
    "DeliveryStatus",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "JobLayer",
    "JobStage",
    "JobStatus",
    "StageStatus",
    "Tenant",
    "WebhookDelivery",
    "WebhookEndpoint",
]
