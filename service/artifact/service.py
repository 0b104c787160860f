"""Artifact use cases: accept an upload (stage, check, commit), fetch one, list a page."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.artifact.inspection import check_kind, infer_kind, read_safetensors_header
from service.artifact.repository import ArtifactRepository
from service.artifact.storage import BlobStore
from service.auth.service import CurrentTenant
from service.kit.errors import NotFound
from service.models import Artifact, ArtifactKind

__all__ = ["ArtifactService"]


class ArtifactService:
    """Uploads and look-ups of a tenant's artifacts."""

    def __init__(self, session: Session, store: BlobStore) -> None:
        self.session = session
        self.store = store
        self.repository = ArtifactRepository(session)

    def upload(
        self,
        tenant: CurrentTenant,
        source: BinaryIO,
        *,
        filename: str,
        kind: ArtifactKind | None,
        max_bytes: int,
    ) -> Artifact:
        """Check and store an uploaded safetensors file; the same content uploaded twice gives the same row.

        Nothing is written to the database, and no blob is kept, unless every check passes.
        """
        staged = self.store.ingest(source, max_bytes)
        try:
            tensors = read_safetensors_header(staged.path)
            resolved_kind = kind or infer_kind(tensors)
            check_kind(resolved_kind, tensors)
        except BaseException:
            self.store.discard(staged)
            raise
        existing = self.repository.get_by_sha256(tenant.id, staged.sha256)
        if existing is not None and existing.kind == resolved_kind:
            self.store.discard(staged)
            return existing
        self.store.commit(staged)
        if existing is not None:  # same bytes declared as another kind: keep one row, update its kind
            existing.kind = resolved_kind
            self.session.commit()
            return existing
        try:
            artifact = self.repository.add(
                tenant_id=tenant.id,
                kind=resolved_kind,
                sha256=staged.sha256,
                size=staged.size,
                filename=Path(filename or "").name[:255],
                tensors={name: info.to_dict() for name, info in tensors.items()},
            )
            self.session.commit()
        except IntegrityError:  # the same tenant uploaded the same bytes concurrently
            self.session.rollback()
            artifact = self.repository.get_by_sha256(tenant.id, staged.sha256)
            if artifact is None:
                raise
        return artifact

    def get(self, tenant: CurrentTenant, artifact_id: uuid.UUID) -> Artifact:
        """The tenant's artifact; 404 for unknown ids and other tenants' artifacts alike."""
        artifact = self.repository.get(tenant.id, artifact_id)
        if artifact is None:
            raise NotFound(f"artifact {artifact_id} not found", code="artifact_not_found")
        return artifact

    def list(
        self, tenant: CurrentTenant, *, kind: ArtifactKind | None, limit: int, offset: int
    ) -> tuple[list[Artifact], int]:
        return self.repository.list(tenant.id, kind=kind, limit=limit, offset=offset)

    def local_path(self, artifact: Artifact) -> Path:
        """The file of an artifact in the blob store."""
        return self.store.blob_path(artifact.sha256)
