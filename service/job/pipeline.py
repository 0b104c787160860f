"""The service's only door to :mod:`quant.pipeline` (imported lazily: it pulls in torch).

Maps the pipeline's :class:`PipelineInputError` to the service's 422 so route handlers never see torch-side types.
"""

from __future__ import annotations

from typing import Any

from quant.config import PipelineConfig
from service.kit.errors import ServiceUnavailable, UnprocessableEntity

__all__ = ["input_error_to_dict", "pipeline_module", "validate"]


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


def validate(config: PipelineConfig) -> None:
    """Run the pipeline's fast checks; 422 with its code, message and details when the user must fix something."""
    pipeline = pipeline_module()
    try:
        pipeline.validate_config(config)
    except pipeline.PipelineInputError as exc:
        error = input_error_to_dict(exc)
        raise UnprocessableEntity(error["message"], code=error["code"], details=error["details"]) from exc
