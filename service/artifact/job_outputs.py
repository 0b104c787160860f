"""Artifacts a job makes for its tenant: the synthetic calibration images of a data-free job.

The pipeline's ``synthesize`` stage stores ``images`` float32 [N,3,H,W] and ``labels`` int64 [N] as a
content-addressed blob of the artifact store, in exactly the images-artifact format. When the job succeeds,
:func:`register_synthetic_images` records that blob as an ``images`` artifact of the job's tenant (the same row when
the tenant already has those bytes), so the tenant can list it, download it (``GET /v1/artifacts/{id}/content``) and
name it as ``data.artifact_id`` of a later job. The job's result says which one: ``synthetic_images``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.artifact.inspection import check_kind, read_safetensors_header
from service.artifact.repository import ArtifactRepository
from service.artifact.storage import BlobStore
from service.db import session_scope
from service.job.repository import JobRepository
from service.models import ArtifactKind

__all__ = ["register_synthetic_images"]


def _images_ref(result: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    stage = (result.get("stages") or {}).get("synthesize")
    if not isinstance(stage, dict) or stage.get("skipped"):
        return None
    ref = stage.get("images")
    if not isinstance(ref, dict) or not isinstance(ref.get("sha256"), str):
        return None
    return ref["sha256"], stage


def register_synthetic_images(
    session_factory: sessionmaker[Session], blobs: BlobStore, job_id: uuid.UUID, result: dict[str, Any]
) -> dict[str, Any]:
    """``result`` with ``synthetic_images: {"artifact_id", "images", "sha256"}`` after registering the images
    artifact (module doc); ``result`` unchanged for a job with real calibration data or a missing blob."""
    found = _images_ref(result)
    if found is None:
        return result
    sha256, stage = found
    path: Path = blobs.blob_path(sha256)
    if not path.is_file():
        return result
    tensors = read_safetensors_header(path)
    check_kind(ArtifactKind.IMAGES, tensors)
    with session_scope(session_factory) as session:
        job = JobRepository(session).get_by_id(job_id)
        if job is None:
            return result
        artifacts = ArtifactRepository(session)
        artifact = artifacts.get_by_sha256(job.tenant_id, sha256, ArtifactKind.IMAGES)
        if artifact is None:
            try:
                artifact = artifacts.add(
                    tenant_id=job.tenant_id, kind=ArtifactKind.IMAGES, sha256=sha256, size=path.stat().st_size,
                    filename=f"synthetic-{job_id}.safetensors",
                    tensors={name: info.to_dict() for name, info in tensors.items()},
                )
                session.commit()
            except IntegrityError:  # the same images registered by a concurrent job of the tenant
                session.rollback()
                artifact = artifacts.get_by_sha256(job.tenant_id, sha256, ArtifactKind.IMAGES)
                if artifact is None:
                    raise
        artifact_id = str(artifact.id)
    return {**result, "synthetic_images": {"artifact_id": artifact_id, "images": stage.get("count"),
                                           "sha256": sha256}}
