"""The local blob store: files named by their SHA-256 under ``<artifact_dir>/blobs``, job folders under ``jobs``.

Uploads stream into ``<artifact_dir>/tmp`` while being hashed and counted, and are renamed into place only once
accepted, so a rejected or interrupted upload never leaves a blob behind and a blob is never half-written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from service.errors import PayloadTooLarge

__all__ = ["BlobStore", "IngestedFile"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestedFile:
    """An upload staged in the temp folder, with its digest and size."""

    path: Path
    sha256: str
    size: int


class BlobStore:
    """Content-addressed files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists yet)."""
        return self.root / "blobs" / sha256[:2] / f"{sha256}.safetensors"

    def job_dir(self, job_id: uuid.UUID | str) -> Path:
        """The folder of one job: ``work/`` (stage checkpoints), ``output/`` (bundle), ``bundle.zip``."""
        return self.root / "jobs" / str(job_id)

    def ingest(self, source: BinaryIO, max_bytes: int) -> IngestedFile:
        """Copy ``source`` into a temp file, hashing it; 413 (and nothing kept) beyond ``max_bytes``."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-", suffix=".part")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                while chunk := source.read(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"upload exceeds the limit of {max_bytes} bytes (MPQ_MAX_UPLOAD_BYTES)",
                            code="upload_too_large",
                            details={"max_bytes": max_bytes},
                        )
                    digest.update(chunk)
                    handle.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return IngestedFile(path=path, sha256=digest.hexdigest(), size=size)

    def commit(self, staged: IngestedFile) -> Path:
        """Move a staged upload into place (atomic rename); an existing identical blob is kept."""
        target = self.blob_path(staged.sha256)
        if target.exists():
            staged.path.unlink(missing_ok=True)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        return target

    @staticmethod
    def discard(staged: IngestedFile) -> None:
        staged.path.unlink(missing_ok=True)

    def remove_job_dir(self, job_id: uuid.UUID | str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
