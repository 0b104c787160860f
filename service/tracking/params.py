"""A job's MLflow params: its configuration as the pipeline runs it, every field, so a run can be reproduced.

The stored request holds only what the tenant gave; a preset (``quick``/``paper``) fills the rest when the job
runs (:func:`quant.presets.resolve_preset`), and ``method.range_search=auto`` becomes ``output`` or ``minmax``
by recipe. The params here are the resolved values: ``preset`` (the preset's name), ``seed``, ``device``, every
``method.*`` field (``method.range_search`` resolved, the request's ``auto`` kept as
``method.range_search_requested``), every ``data.*`` field, ``model``/``arch_kwargs``/``weights_artifact_id``,
``export_onnx`` and one ``budget.<name>`` per budget. Inputs are named by artifact id or relative folder, never
by a server path.
"""

from __future__ import annotations

import json
from typing import Any

from quant.config import DataSpec, ModelSpec, PipelineConfig
from service.job.schemas import JobCreate

__all__ = ["MAX_PARAM_LENGTH", "resolved_params"]

#: MLflow's limit on a param value.
MAX_PARAM_LENGTH = 6000


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def resolved_params(spec: dict[str, Any], device: str) -> dict[str, str]:
    """The params of a job with request ``spec`` that runs (or would run) on ``device`` (``cpu``, ``cuda``...)."""
    from quant.presets import resolve_preset
    from quant.ptq import resolve_range_search

    job = JobCreate.model_validate(spec)
    given_data = {key: getattr(job.data, key) for key in DataSpec.model_fields if key in job.data.model_fields_set}
    config = resolve_preset(
        PipelineConfig(
            model=ModelSpec(name=job.model.name, arch_kwargs=job.model.arch_kwargs),
            data=DataSpec(**{key: value for key, value in given_data.items() if key not in ("source", "eval_source", "synthetic")}),
            method=job.method,
            seed=job.seed,
            device=device,
            preset=job.preset,
            export_onnx=job.export_onnx,
        ),
        device,
    )
    params: dict[str, Any] = {
        "name": job.name,
        "model": job.model.name,
        "arch_kwargs": job.model.arch_kwargs,
        "weights_artifact_id": job.model.weights_artifact_id or "",
        "seed": config.seed,
        "device": device,
        "preset": config.preset,
        "export_onnx": config.export_onnx,
    }
    method = config.method.model_dump(mode="json")
    for key, value in method.items():
        params[f"method.{key}"] = value
    params["method.range_search_requested"] = method["range_search"]
    params["method.range_search"] = resolve_range_search(method["quantizer"], method["range_search"])
    for key, value in (method.get("budgets") or {}).items():
        params[f"budget.{key}"] = value
    resolved_data = config.data.model_dump(mode="json")
    resolved_data.pop("synthetic", None)  # the request's own block (images, steps, seed) is the param
    for key, value in job.data.model_dump(mode="json").items():  # the request's sources, the resolved sizes
        params[f"data.{key}"] = resolved_data.get(key, value)
    return {key: ("" if value is None else _text(value))[:MAX_PARAM_LENGTH] for key, value in params.items()}
