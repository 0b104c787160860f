"""The service's only door to :mod:`quant.pipeline` and :mod:`quant.allocation` (imported lazily: they pull in torch).

Maps the pipeline's :class:`PipelineInputError` to the service's 422 (409 for a job without a sensitivity table)
so route handlers never see torch-side types.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from quant.config import MethodSpec, PipelineConfig
from service.errors import Conflict, ServiceUnavailable, UnprocessableEntity

__all__ = ["input_error_to_dict", "pareto", "pipeline_module", "validate"]


def pipeline_module() -> Any:
    """``quant.pipeline``; 503 when this installation has no pipeline."""
    try:
        from quant import pipeline
    except ImportError as exc:  # pragma: no cover - only while quant/pipeline.py is missing
        raise ServiceUnavailable(
            f"the quantization pipeline is not available: {exc}", code="pipeline_unavailable"
        ) from exc
    return pipeline


def input_error_to_dict(exc: Exception) -> dict[str, Any]:
    """``{"code", "message", "details"}`` of a ``PipelineInputError``."""
    return {
        "code": str(getattr(exc, "code", "invalid_input")),
        "message": str(getattr(exc, "message", None) or exc),
        "details": getattr(exc, "details", None) or {},
    }


#: Configurations that passed validation. Artifact paths are content-addressed (the path names the bytes) and
#: built-in models and data are immutable, so a config that passed once passes again; image folders can change
#: and are never cached.
_VALIDATED: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_VALIDATED_MAX = 512
_VALIDATED_LOCK = threading.Lock()


def _cache_key(config: PipelineConfig) -> str | None:
    sources = (config.data.source, config.data.eval_source or "")
    if any(source.startswith("folder:") for source in sources):
        return None
    return config.model_dump_json()


_IN_FLIGHT: dict[str, threading.Lock] = {}


def _remembered(key: str) -> list[dict[str, Any]] | None:
    with _VALIDATED_LOCK:
        if key in _VALIDATED:
            _VALIDATED.move_to_end(key)
            return _VALIDATED[key]
    return None


def _run_validation(config: PipelineConfig) -> list[dict[str, Any]]:
    pipeline = pipeline_module()
    try:
        warnings = pipeline.validate_config(config)
    except pipeline.PipelineInputError as exc:
        error = input_error_to_dict(exc)
        raise UnprocessableEntity(error["message"], code=error["code"], details=error["details"]) from exc
    return list(warnings) if isinstance(warnings, list) else []


def validate(config: PipelineConfig) -> list[dict[str, Any]]:
    """Run the pipeline's fast checks; 422 with its code, message and details when the user must fix something.
    Returns the warnings ``[{"code", "message"}]`` of an accepted configuration.

    Successful validations are remembered (see ``_VALIDATED``), and concurrent requests for the same
    configuration wait for one validation instead of each running their own (single flight).
    """
    key = _cache_key(config)
    if key is None:
        return _run_validation(config)
    if (warnings := _remembered(key)) is not None:
        return warnings
    with _VALIDATED_LOCK:
        lock = _IN_FLIGHT.setdefault(key, threading.Lock())
    with lock:
        if (warnings := _remembered(key)) is not None:
            return warnings
        try:
            warnings = _run_validation(config)
            with _VALIDATED_LOCK:
                _VALIDATED[key] = warnings
                while len(_VALIDATED) > _VALIDATED_MAX:
                    _VALIDATED.popitem(last=False)
        finally:
            with _VALIDATED_LOCK:
                _IN_FLIGHT.pop(key, None)
    return warnings


#: ``PipelineInputError`` codes of a sweep that mean "this job has nothing to sweep yet": 409, not 422.
_CONFLICT_CODES = frozenset({"sensitivity_unavailable"})


def pareto(
    stages: dict[str, dict[str, Any]],
    method: MethodSpec,
    budget: str,
    *,
    points: int,
    values: list[float] | None,
    time_limit: float,
) -> dict[str, Any]:
    """``quant.allocation.pareto_from_stages`` on a job's stored stage outputs (by stage name).

    409 ``sensitivity_unavailable`` when there is no sensitivity table, 422 with the sweep's own code and message
    (e.g. ``invalid_budget`` for latency without a latency table) for what the caller must change.
    """
    try:
        from quant.allocation import pareto_from_stages
        from quant.errors import PipelineInputError
    except ImportError as exc:  # pragma: no cover - only while quant/pareto.py is missing
        raise ServiceUnavailable(
            f"budget sweeps are not available: {exc}", code="pareto_unavailable"
        ) from exc
    try:
        return pareto_from_stages(stages, method, budget, points=points, values=values, time_limit=time_limit)
    except PipelineInputError as exc:
        error = input_error_to_dict(exc)
        kind = Conflict if error["code"] in _CONFLICT_CODES else UnprocessableEntity
        raise kind(error["message"], code=error["code"], details=error["details"]) from exc
