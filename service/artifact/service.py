"""Artifact use cases: accept an upload (stage, check, commit), fetch one, list a page."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.artifact.inspection import check_kind, infer_kind, nonfinite_tensors, read_safetensors_header
from service.artifact.repository import ArtifactRepository
from service.artifact.storage import BlobStore
from service.auth.service import CurrentTenant
from service.errors import NotFound
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
            existing = self.repository.get_by_sha256(tenant.id, staged.sha256, resolved_kind)
            if existing is None:
                nonfinite = nonfinite_tensors(staged.path, tensors)
        except BaseException:
            self.store.discard(staged)
            raise
        if existing is not None:
            self.store.discard(staged)
            return existing
        self.store.commit(staged)
        described = {name: info.to_dict() for name, info in tensors.items()}
        for name in nonfinite:  # kept on the artifact: jobs using it are refused at submit
            described[name]["nonfinite"] = True
        try:  # same bytes under another kind: a new artifact row; the existing one keeps its kind
            artifact = self.repository.add(
                tenant_id=tenant.id,
                kind=resolved_kind,
                sha256=staged.sha256,
                size=staged.size,
                filename=Path(filename or "").name[:255],
                tensors=described,
            )
            self.session.commit()
        except IntegrityError:  # the same tenant uploaded the same bytes concurrently
            self.session.rollback()
            artifact = self.repository.get_by_sha256(tenant.id, staged.sha256, resolved_kind)
            if artifact is None:
                raise
        return artifact

    def get(self, tenant: CurrentTenant, artifact_id: uuid.UUID) -> Artifact:
        """The tenant's artifact; 404 for unknown ids and other tenants' artifacts alike."""
        artifact = self.repository.get(tenant.id, artifact_id)
        if artifact is None:
            raise NotFound(f"artifact {artifact_id} not found", code="artifact_not_found")
        return artifact

    def local_path(self, artifact: Artifact) -> Path:
        """The file of an artifact in the blob store."""
        return self.store.blob_path(artifact.sha256)
