"""Queries on artifacts (always scoped to a tenant)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Artifact, ArtifactKind
from service.pagination import Page, keyset_page

__all__ = ["ArtifactRepository"]


class ArtifactRepository:
    """Data access for :class:`Artifact`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: uuid.UUID, artifact_id: uuid.UUID) -> Artifact | None:
        return self.session.scalar(
            select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant_id == tenant_id)
        )

    def get_by_sha256(self, tenant_id: uuid.UUID, sha256: str, kind: ArtifactKind) -> Artifact | None:
        """The tenant's artifact of these bytes and this kind (the same bytes may be one artifact per kind)."""
        return self.session.scalar(
            select(Artifact).where(
                Artifact.tenant_id == tenant_id, Artifact.sha256 == sha256, Artifact.kind == kind
            )
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
        self,
        tenant_id: uuid.UUID,
        *,
        limit: int,
        after: str | None = None,
        kind: ArtifactKind | None = None,
        created_after: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
    ) -> Page[Artifact]:
        """One cursor page of the tenant's artifacts, newest first (date bounds exclusive)."""
        statement = select(Artifact).where(Artifact.tenant_id == tenant_id)
        if kind is not None:
            statement = statement.where(Artifact.kind == kind)
        if created_after is not None:
            statement = statement.where(Artifact.created_at > created_after)
        if created_before is not None:
            statement = statement.where(Artifact.created_at < created_before)
        return keyset_page(
            self.session, statement, Artifact.created_at, Artifact.id, limit=limit, after=after
        )
