"""The ``load`` stage: the float model, the calibration and evaluation images, and the device."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import PipelineConfig
from ..data import DataLoadError, ImageSet, load_dataset
from ..errors import PipelineInputError
from ..models import BUILTIN_MODELS, ModelLoadError, build_model, model_info
from ..validation import calibration_warning, check_finite_weights, synthetic_warnings

__all__ = ["LoadedJob", "load_job", "load_output", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise PipelineInputError("invalid_device", f"unknown device {device!r}; use auto, cpu or cuda") from exc


@dataclass
class LoadedJob:
    """What every later stage works from: the float model (on ``device``), ``calib``/``evaluation`` images, the
    input shape ``(C, H, W)``, load time and warnings. ``calib`` is None after loading a data-free job: the
    ``synthesize`` stage sets it."""

    config: PipelineConfig
    device: torch.device
    float_model: nn.Module
    calib: ImageSet | None
    evaluation: ImageSet | None
    input_shape: tuple[int, int, int]
    load_seconds: float
    warnings: list[dict] = field(default_factory=list)


def _load_model(config: PipelineConfig) -> nn.Module:
    spec = config.model
    if spec.name.startswith("builtin:"):
        if spec.name.removeprefix("builtin:") not in BUILTIN_MODELS:
            known = ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
            raise PipelineInputError("unknown_architecture",
                                     f"unknown built-in model {spec.name!r}; built-in models are {known}")
    else:
        import timm

        if not timm.is_model(spec.name):
            raise PipelineInputError(
                "unknown_architecture",
                f"unknown architecture {spec.name!r}; use builtin:vit-digits, builtin:swin-digits or a timm "
                "model name such as vit_small_patch16_224",
            )
        if spec.weights_path is None:
            raise PipelineInputError("missing_weights", f"model {spec.name!r} needs weights (a safetensors file)")
    try:
        model = build_model(spec.name, dict(spec.arch_kwargs), spec.weights_path)
        check_finite_weights(model)
        return model
    except ModelLoadError as exc:
        raise PipelineInputError("invalid_weights", str(exc)) from exc
    except TypeError as exc:
        raise PipelineInputError("invalid_arch_kwargs", f"invalid arch_kwargs for {spec.name!r}: {exc}") from exc


def _load_images(config: PipelineConfig, input_shape: tuple[int, int, int]) -> tuple[ImageSet | None, ImageSet | None]:
    data = config.data
    try:
        kwargs = {"model_name": config.model.name, "arch_kwargs": dict(config.model.arch_kwargs)}
        calib = None if data.is_synthetic else load_dataset(data.source, split="calib", max_images=data.num_calibration,
                                                            **kwargs)
        if data.eval_source is not None:
            evaluation: ImageSet | None = load_dataset(data.eval_source, split="test", **kwargs)
        elif data.source.startswith("builtin:"):
            evaluation = load_dataset(data.source, split="test", **kwargs)
        else:
            evaluation = None
    except DataLoadError as exc:
        raise PipelineInputError("invalid_data", str(exc)) from exc
    for label, images in (("calibration", calib), ("evaluation", evaluation)):
        if images is not None and tuple(images.images.shape[1:]) != tuple(input_shape):
            raise PipelineInputError(
                "invalid_data",
                f"{label} images have shape {list(images.images.shape[1:])} per image but the model expects "
                f"{list(input_shape)} (C, H, W); resize the images or set img_size in arch_kwargs",
            )
    if calib is None:
        return None, evaluation
    n = min(data.num_calibration, len(calib))
    calib = ImageSet(calib.images[:n], None if calib.labels is None else calib.labels[:n])
    return calib, evaluation


def load_job(config: PipelineConfig, device: torch.device) -> LoadedJob:
    """Load the float model onto ``device`` and the images (redone on every run: inputs are not stored)."""
    start = time.perf_counter()
    float_model = _load_model(config).to(device)
    input_shape = tuple(model_info(config.model.name, dict(config.model.arch_kwargs))["input_size"])
    calib, evaluation = _load_images(config, input_shape)
    warnings = synthetic_warnings(config)
    if calib is not None and len(calib) < config.data.num_calibration:
        warnings.append({"code": "calibration_images_capped",
                         "message": calibration_warning(config.data.num_calibration, len(calib))})
    return LoadedJob(config, device, float_model, calib, evaluation, input_shape, time.perf_counter() - start,
                     warnings)


def load_output(job: LoadedJob) -> dict:
    """The ``load`` stage's stored output."""
    return {
        "model": job.config.model.name,
        "input_shape": list(job.input_shape),
        "calibration_images": len(job.calib) if job.calib is not None else job.config.data.num_calibration,
        "evaluation_images": len(job.evaluation) if job.evaluation is not None else 0,
        "device": str(job.device),
        "load_seconds": job.load_seconds,
        "warnings": job.warnings,
    }
