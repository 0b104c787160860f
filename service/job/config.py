"""Turn a stored job request into a :class:`quant.config.PipelineConfig` with local file paths.

The same function runs in the API (to validate a request before accepting it) and in the worker (to run it), each
with its own view of the artifact store and data root, so the job row itself only ever holds artifact ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from quant.config import DataSpec, ModelSpec, PipelineConfig
from service.job.schemas import JobCreate
from service.kit.errors import UnprocessableEntity

__all__ = ["DEFAULT_DATA", "build_pipeline_config", "resolve_data_folder"]

DEFAULT_DATA = "builtin:digits"


def resolve_data_folder(data_root: Path | None, relative: str, field: str) -> Path:
    """An existing folder inside ``data_root``; 422 when folders are disabled, outside the root, or missing."""
    if data_root is None:
        raise UnprocessableEntity(
            f"{field}: image folders are disabled on this server (MPQ_DATA_ROOT is not set)",
            code="data_folder_disabled",
        )
    root = Path(data_root).resolve()
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise UnprocessableEntity(
            f"{field}: must be a relative path inside the data root without '..'", code="invalid_data_folder"
        )
    path = (root / candidate).resolve()
    if not path.is_relative_to(root):
        raise UnprocessableEntity(f"{field}: path leaves the data root", code="invalid_data_folder")
    if not path.is_dir():
        raise UnprocessableEntity(
            f"{field}: folder {relative!r} not found under the data root", code="data_folder_not_found"
        )
    return path


def build_pipeline_config(
    spec: JobCreate, *, artifact_path: Callable[[uuid.UUID], Path], data_root: Path | None
) -> PipelineConfig:
    """The pipeline config of ``spec``; ``artifact_path`` maps an artifact id to its local file."""
    weights = spec.model.weights_artifact_id
    data = spec.data
    if data.artifact_id is not None:
        source = str(artifact_path(data.artifact_id))
    elif data.folder is not None:
        source = "folder:" + str(resolve_data_folder(data_root, data.folder, "data.folder"))
    else:
        source = data.builtin or DEFAULT_DATA
    if data.eval_artifact_id is not None:
        eval_source: str | None = str(artifact_path(data.eval_artifact_id))
    elif data.eval_folder is not None:
        eval_source = "folder:" + str(resolve_data_folder(data_root, data.eval_folder, "data.eval_folder"))
    else:
        eval_source = None
    try:
        return PipelineConfig(
            model=ModelSpec(
                name=spec.model.name,
                arch_kwargs=spec.model.arch_kwargs,
                weights_path=str(artifact_path(weights)) if weights is not None else None,
            ),
            data=DataSpec(
                source=source,
                eval_source=eval_source,
                num_calibration=data.num_calibration,
                batch_size=data.batch_size,
            ),
            method=spec.method,
            seed=spec.seed,
            device=spec.device,
        )
    except ValidationError as exc:
        raise UnprocessableEntity(
            f"invalid job configuration: {exc.errors()[0]['msg']}", code="invalid_config"
        ) from exc
