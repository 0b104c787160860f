"""Queries on artifacts (always scoped to a tenant)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Artifact, ArtifactKind

__all__ = ["ArtifactRepository"]


class ArtifactRepository:
    """Data access for :class:`Artifact`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: uuid.UUID, artifact_id: uuid.UUID) -> Artifact | None:
        return self.session.scalar(
            select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant_id == tenant_id)
        )

    def get_by_sha256(self, tenant_id: uuid.UUID, sha256: str) -> Artifact | None:
        return self.session.scalar(
            select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.sha256 == sha256)
        )

    def add(
        self,
        *,
        tenant_id: uuid.UUID,
        kind: ArtifactKind,
        sha256: str,
        size: int,
        filename: str,
        tensors: dict[str, Any],
    ) -> Artifact:
        artifact = Artifact(
            tenant_id=tenant_id, kind=kind, sha256=sha256, size=size, filename=filename, tensors=tensors
        )
        self.session.add(artifact)
        self.session.flush()
        return artifact

    def list(
        self, tenant_id: uuid.UUID, *, kind: ArtifactKind | None, limit: int, offset: int
    ) -> tuple[list[Artifact], int]:
        """A page of the tenant's artifacts, newest first, and the total count."""
        where = [Artifact.tenant_id == tenant_id]
        if kind is not None:
            where.append(Artifact.kind == kind)
        total = self.session.scalar(select(func.count()).select_from(Artifact).where(*where)) or 0
        rows = self.session.scalars(
            select(Artifact)
            .where(*where)
            .order_by(Artifact.created_at.desc(), Artifact.id)
            .limit(limit)
            .offset(offset)
        ).all()
        return list(rows), total
