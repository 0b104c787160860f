"""Turn a stored job request into a :class:`quant.config.PipelineConfig` with local file paths.

The same function runs in the API (to validate a request before accepting it) and in the worker (to run it), each
with its own view of the artifact store and data root, so the job row itself only ever holds artifact ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from quant.config import SYNTHETIC_SOURCE, DataSpec, ModelSpec, PipelineConfig, SyntheticSpec
from service.errors import UnprocessableEntity
from service.job.schemas import JobCreate
from service.models import Artifact, ArtifactKind
from service.settings import Settings

__all__ = [
    "DEFAULT_DATA",
    "build_pipeline_config",
    "check_artifact_finite",
    "check_device",
    "check_limits",
    "resolve_data_folder",
    "warm_up",
    "workers_have_cuda",
]

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
    spec: JobCreate,
    *,
    artifact_path: Callable[[uuid.UUID], Path],
    data_root: Path | None,
    worker_device: str | None = None,
) -> PipelineConfig:
    """The pipeline config of ``spec``; ``artifact_path`` maps an artifact id to its local file.

    ``worker_device`` (the worker's ``MPQ_DEVICE``) replaces a request's ``auto`` device.
    """
    weights = spec.model.weights_artifact_id
    data = spec.data
    synthetic: dict = {}
    if data.synthetic is not None:  # data-free: the synthesize stage generates the calibration images
        source = SYNTHETIC_SOURCE
        synthetic = {"num_calibration": data.synthetic.images,
                     "synthetic": SyntheticSpec(steps=data.synthetic.steps, seed=data.synthetic.seed)}
    elif data.artifact_id is not None:
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
            # Only the data settings the request gave are passed on, so that a preset can fill the others.
            data=DataSpec(
                source=source,
                eval_source=eval_source,
                **{key: getattr(data, key) for key in ("num_calibration", "batch_size") if key in data.model_fields_set},
                **synthetic,
            ),
            method=spec.method,
            seed=spec.seed,
            device=worker_device if spec.device == "auto" and worker_device else spec.device,
            preset=spec.preset,
            export_onnx=spec.export_onnx,
        )
    except ValidationError as exc:
        raise UnprocessableEntity(
            f"invalid job configuration: {exc.errors()[0]['msg']}", code="invalid_config"
        ) from exc


#: (field, config attribute path, settings field) of every bounded request value.
_LIMITS = (
    ("method.reconstruct_iters", ("method", "reconstruct_iters"), "max_reconstruct_iters"),
    ("method.iterative_rounds", ("method", "iterative_rounds"), "max_iterative_rounds"),
    ("method.reconstruct_rank", ("method", "reconstruct_rank"), "max_reconstruct_rank"),
    ("data.num_calibration", ("data", "num_calibration"), "max_calibration_images"),
    ("method.sweep_measure", ("method", "sweep_measure"), "max_sweep_measure"),
)


def check_limits(config: PipelineConfig, settings: Settings) -> None:
    """422 ``limit_exceeded`` when the request asks for more iterations, rounds, rank, calibration images or
    measured sweep points than the operator allows (``MPQ_MAX_RECONSTRUCT_ITERS``, ``MPQ_MAX_ITERATIVE_ROUNDS``,
    ``MPQ_MAX_RECONSTRUCT_RANK``, ``MPQ_MAX_CALIBRATION_IMAGES``, ``MPQ_MAX_SWEEP_MEASURE``)."""
    for field, (section, attribute), setting in _LIMITS:
        value = getattr(getattr(config, section), attribute, None)
        if field == "data.num_calibration" and config.data.is_synthetic:
            field = "data.synthetic.images"
        limit = getattr(settings, setting)
        if isinstance(value, int) and value > limit:
            raise UnprocessableEntity(
                f"{field} is {value}; this server allows at most {limit} (operator setting MPQ_{setting.upper()})",
                code="limit_exceeded",
                details={"field": field, "value": value, "max": limit},
            )


def workers_have_cuda(settings: Settings) -> bool:
    """Whether jobs run on a GPU: ``MPQ_DEVICE=cuda``, or ``auto`` in a process that sees one."""
    if settings.device == "cuda":
        return True
    if settings.device == "cpu":
        return False
    import torch

    return bool(torch.cuda.is_available())


def check_device(requested: str, settings: Settings) -> None:
    """422 ``device_unavailable`` when the workers cannot serve ``requested`` (``auto``/``cpu`` always can;
    ``cuda`` needs GPU workers, and each worker sees exactly one GPU, so only ``cuda`` / ``cuda:0`` exist)."""
    if not requested.startswith("cuda"):
        return
    if not workers_have_cuda(settings):
        raise UnprocessableEntity(
            f"device {requested!r} is not available: this deployment's workers run on the CPU "
            f"(MPQ_DEVICE={settings.device}); ask for 'cpu' or 'auto'",
            code="device_unavailable",
            details={"device": requested, "worker_device": "cpu"},
        )
    if requested not in ("cuda", "cuda:0"):
        raise UnprocessableEntity(
            f"device {requested!r} is not available: each worker runs one job on the one GPU it sees "
            "(CUDA_VISIBLE_DEVICES); ask for 'cuda'",
            code="device_unavailable",
            details={"device": requested, "worker_device": "cuda"},
        )


def check_artifact_finite(artifact: Artifact, field: str) -> None:
    """422 ``nonfinite_weights`` / ``nonfinite_images`` when the upload scan found NaN or inf in the artifact."""
    bad = sorted(
        name
        for name, entry in (artifact.tensors or {}).items()
        if isinstance(entry, dict) and entry.get("nonfinite")
    )
    if not bad:
        return
    what = "weights" if artifact.kind == ArtifactKind.WEIGHTS else "images"
    more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
    raise UnprocessableEntity(
        f"{field}: artifact {artifact.id} holds NaN or infinite values in {len(bad)} tensors "
        f"({', '.join(bad[:5])}{more}); fix the file and upload it again",
        code=f"nonfinite_{what}",
        details={"field": field, "tensors": bad[:50]},
    )


def warm_up() -> None:
    """Import the pipeline, validation and solver modules (torch, timm) now, so no request pays for it."""
    import quant.allocation
    import quant.pipeline
    import quant.validation  # noqa: F401
