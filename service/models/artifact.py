"""Uploaded inputs: safetensors files of model weights or of images (and labels)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, JSONType, UTCDateTime, utcnow
from service.models._types import str_enum

__all__ = ["Artifact", "ArtifactKind"]


class ArtifactKind(enum.StrEnum):
    """What an uploaded safetensors file holds."""

    WEIGHTS = "weights"  # a model state_dict
    IMAGES = "images"  # ``images`` float32 [N,3,H,W] and optional ``labels`` int [N]


class Artifact(Base):
    """An uploaded file of a tenant. The bytes live in the blob store under their SHA-256."""

    __tablename__ = "artifacts"
    #: The same bytes may be uploaded once per kind: an artifact's kind belongs to the artifact, not to the blob.
    __table_args__ = (UniqueConstraint("tenant_id", "sha256", "kind"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ArtifactKind] = mapped_column(str_enum(ArtifactKind))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255), default="")
    #: ``{tensor name: {"dtype": "F32", "shape": [..]}}`` read from the safetensors header.
    tensors: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
