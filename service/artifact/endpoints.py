"""HTTP routes of artifacts: ``POST /v1/artifacts`` (multipart), ``GET /v1/artifacts[/{id}]``,
``GET /v1/artifacts/{id}/content`` (the file)."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse

from service.artifact.schemas import ArtifactPublic, ArtifactsPublic
from service.artifact.service import ArtifactService
from service.artifact.storage import BlobStore
from service.auth.dependencies import TenantDep
from service.deps import SessionDep, SettingsDep
from service.errors import Conflict
from service.idempotency import IdempotencyKeyDep, run_idempotent
from service.models import ArtifactKind
from service.schemas import error_responses

__all__ = ["router"]

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ArtifactPublic,
    responses=error_responses(400, 413, 415),
    summary="Upload a safetensors file of weights or images",
)
def upload_artifact(
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile, File(description="A .safetensors file (pickles and other formats are refused)")
    ],
    kind: Annotated[
        ArtifactKind | None,
        Form(
            description="weights or images; inferred from the tensors when omitted ('images' present -> images)"
        ),
    ] = None,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """Store the file under its SHA-256 after checking its header (tensors are never loaded).

    An ``images`` artifact holds ``images`` float32 [N,3,H,W] and optionally ``labels`` int64 [N].
    """

    def handler() -> tuple[int, ArtifactPublic]:
        service = ArtifactService(session, BlobStore(settings.artifact_dir))
        artifact = service.upload(
            tenant, file.file, filename=file.filename or "", kind=kind, max_bytes=settings.max_upload_bytes
        )
        return status.HTTP_201_CREATED, ArtifactPublic.model_validate(artifact)

    body = None
    if idempotency_key is not None:  # "the same request": same bytes, name and kind
        digest = hashlib.sha256()
        while chunk := file.file.read(1 << 20):
            digest.update(chunk)
        file.file.seek(0)
        body = {"sha256": digest.hexdigest(), "filename": file.filename or "", "kind": kind}
    return run_idempotent(request, tenant, idempotency_key, body, handler)


@router.get("", response_model=ArtifactsPublic, responses=error_responses(), summary="List own artifacts")
def list_artifacts(
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    kind: ArtifactKind | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> ArtifactsPublic:
    """The caller's artifacts, newest first, one cursor page after ``after`` (date bounds exclusive)."""
    page = ArtifactService(session, BlobStore(settings.artifact_dir)).repository.list(
        tenant.id,
        kind=kind,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        after=after,
    )
    return ArtifactsPublic(
        data=[ArtifactPublic.model_validate(row) for row in page.rows],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )


@router.get("/{artifact_id}", response_model=ArtifactPublic, responses=error_responses(404))
def get_artifact(
    artifact_id: uuid.UUID, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> ArtifactPublic:
    """One of the caller's artifacts."""
    artifact = ArtifactService(session, BlobStore(settings.artifact_dir)).get(tenant, artifact_id)
    return ArtifactPublic.model_validate(artifact)


@router.get(
    "/{artifact_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The safetensors file"},
               **error_responses(404, 409)},
    summary="Download one of the caller's artifacts (e.g. a data-free job's synthetic images)",
)
def download_artifact_content(
    artifact_id: uuid.UUID, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """The artifact's safetensors file, byte for byte (``X-Content-SHA256`` is its digest)."""
    service = ArtifactService(session, BlobStore(settings.artifact_dir))
    artifact = service.get(tenant, artifact_id)
    path = service.local_path(artifact)
    if not path.is_file():
        raise Conflict(f"the file of artifact {artifact_id} is missing from the artifact store",
                       code="artifact_missing")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=artifact.filename or f"{artifact.id}.safetensors",
                        headers={"X-Content-SHA256": artifact.sha256})
