"""Request/response schemas of the artifact endpoints."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel

from service.models import ArtifactKind
from service.schemas import Schema

__all__ = ["ArtifactPublic", "ArtifactsPublic", "TensorPublic"]


class TensorPublic(BaseModel):
    dtype: str
    shape: list[int]
    #: True when the upload scan found NaN or inf in this tensor (jobs using the artifact are refused).
    nonfinite: bool = False


class ArtifactPublic(Schema):
    """An uploaded artifact as the API shows it."""

    id: uuid.UUID
    kind: ArtifactKind
    sha256: str
    size: int
    filename: str
    tensors: dict[str, TensorPublic]
    created_at: dt.datetime


class ArtifactsPublic(BaseModel):
    """A page of artifacts."""

    data: list[ArtifactPublic]
    has_more: bool
    next_cursor: str | None
