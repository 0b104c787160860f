"""Verified bundle downloads, shared by the sync and async clients.

The bytes go to a temporary file next to the destination while their sha256 is computed. The expected digest
is the response's ``X-Content-SHA256`` header or, when a proxy or cache dropped it, the job's ``bundle_sha256``
(read from ``GET /v1/jobs/{id}``): a download is never accepted unchecked. Only a verified file is renamed to
the destination, or extracted into a temporary folder first and then moved into place, so a mismatch or a
broken transfer leaves nothing behind and raises :class:`~service.client.errors.ChecksumMismatch`.
"""

from __future__ import annotations

import os
import shutil
import uuid
import zipfile
from pathlib import Path

from service.client._core import check_archive
from service.client.errors import APIError, ChecksumMismatch

__all__ = ["SHA256_HEADER", "finish_download", "temporary_path"]

#: The response header carrying the bundle's sha256.
SHA256_HEADER = "x-content-sha256"


def temporary_path(destination: Path, suffix: str) -> Path:
    """A fresh hidden path beside ``destination`` (same file system, so the final rename is atomic)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    return destination.parent / f".{destination.name}.{uuid.uuid4().hex[:12]}.{suffix}"


def _verify(part: Path, expected: str, actual: str, source: str) -> None:
    if not expected:
        raise ChecksumMismatch(
            200,
            "checksum_unavailable",
            "the bundle has no sha256 to check against (no X-Content-SHA256 header and no bundle_sha256 on "
            "the job); nothing was saved",
        )
    if expected.lower() != actual:
        raise ChecksumMismatch(
            200,
            "checksum_mismatch",
            f"the downloaded bundle's sha256 is {actual}, {source} says {expected}: the transfer was corrupted; "
            "nothing was saved",
            {"expected": expected, "actual": actual, "source": source},
        )
    if not zipfile.is_zipfile(part):
        raise ChecksumMismatch(200, "not_a_zip", "the downloaded bundle is not a zip archive; nothing was saved")


def _move_tree(source: Path, destination: Path) -> None:
    """Move the files under ``source`` into ``destination`` (an existing folder), replacing same-named files."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            target = destination / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def finish_download(
    part: Path, destination: Path, expected: str, actual: str, *, extract: bool, source: str
) -> Path:
    """Verify the temporary file ``part`` (sha256 ``actual``) against ``expected`` (from ``source``), then move
    it to ``destination`` or extract it there; on any failure nothing is left at ``destination`` that was not
    there before. ``part`` is always removed."""
    try:
        _verify(part, expected, actual, source)
        if not extract:
            os.replace(part, destination)
            return destination
        staging = temporary_path(destination, "extract")
        try:
            staging.mkdir()
            check_archive(part, staging)
            try:
                with zipfile.ZipFile(part) as archive:
                    archive.extractall(staging)
            except (zipfile.BadZipFile, OSError) as exc:
                raise APIError(200, "corrupt_bundle", f"the verified bundle cannot be extracted: {exc}") from exc
            if destination.exists():
                _move_tree(staging, destination)
            else:
                os.replace(staging, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return destination
    finally:
        part.unlink(missing_ok=True)
