"""Where finished stage outputs live: the ``StageStore`` protocol, the in-memory store and tensor blobs.

A stage output is a JSON-able dict. Stages that produce tensors (the calibration's parameter table, reconstruction's
refined params) write them as a safetensors *blob*: content-addressed by its SHA-256, so a stage output that
names a blob (``{"sha256", "bytes"}``) can be reused by another job of the same store (a reallocation) and a resumed
run finds it again. A store that lacks a named blob makes the stage run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["InMemoryStageStore", "StageStore", "load_tensors", "save_tensors"]


class StageStore(Protocol):
    """Stage outputs and blobs of one job (the service backs this with the job's DB rows and its blob store)."""

    workdir: Path

    def load(self, stage: str) -> dict | None: ...

    def save(self, stage: str, output: dict) -> None: ...

    def put_blob(self, path: Path, sha256: str) -> None: ...

    def blob_path(self, sha256: str) -> Path | None: ...


class InMemoryStageStore:
    """A ``StageStore`` kept in a dict (the command line's store); ``workdir`` is a temporary folder and blobs live
    under ``workdir/blobs`` (or ``blob_dir``, e.g. shared between the stores of several local runs)."""

    def __init__(self, workdir: Path | None = None, outputs: dict[str, dict] | None = None,
                 blob_dir: Path | None = None) -> None:
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mpq-"))
        self.outputs: dict[str, dict] = dict(outputs or {})
        self.blob_dir = Path(blob_dir) if blob_dir else self.workdir / "blobs"

    def load(self, stage: str) -> dict | None:
        return self.outputs.get(stage)

    def save(self, stage: str, output: dict) -> None:
        self.outputs[stage] = json.loads(json.dumps(output))

    def put_blob(self, path: Path, sha256: str) -> None:
        target = self.blob_dir / f"{sha256}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            Path(path).unlink(missing_ok=True)
        else:
            shutil.move(str(path), str(target))

    def blob_path(self, sha256: str) -> Path | None:
        path = self.blob_dir / f"{sha256}.safetensors"
        return path if path.is_file() else None


def save_tensors(store: StageStore, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> dict:
    """Write ``tensors`` (and a JSON ``metadata`` object) as a blob of ``store``; returns ``{"sha256", "bytes"}``."""
    store.workdir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store.workdir, prefix="blob-", suffix=".safetensors")
    os.close(fd)
    path = Path(name)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
                  metadata={"json": json.dumps(metadata or {})})
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        size = path.stat().st_size
        sha256 = digest.hexdigest()
        store.put_blob(path, sha256)
    finally:
        path.unlink(missing_ok=True)
    return {"sha256": sha256, "bytes": size}


def load_tensors(store: StageStore, ref: dict | None) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(tensors, metadata)`` of the blob ``ref`` names, or None when the store does not have it (or it is
    corrupt: the caller then computes the stage again)."""
    if not isinstance(ref, dict) or not isinstance(ref.get("sha256"), str):
        return None
    path = store.blob_path(ref["sha256"])
    if path is None:
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("json", "{}"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception:  # noqa: BLE001 - an unreadable blob is a missing blob: the stage runs again
        return None
    return tensors, metadata
