"""ORM models of the service (SQLAlchemy 2, ``Mapped[...]``). Import from here; Alembic reads ``Base.metadata``."""

from service.kit.db import Base
from service.models.artifact import Artifact, ArtifactKind
from service.models.job import Job, JobLayer, JobStage, JobStatus, StageStatus
from service.models.tenant import APIKey, Tenant

__all__ = [
    "APIKey",
    "Artifact",
    "ArtifactKind",
    "Base",
    "Job",
    "JobLayer",
    "JobStage",
    "JobStatus",
    "StageStatus",
    "Tenant",
]
