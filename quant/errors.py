"""Error types of a quantization run, in their own module so that every stage can raise them without importing
:mod:`quant.pipeline` (which imports the stages): the layers stay one-way.

:mod:`quant.pipeline` re-exports both names for compatibility.
"""

from __future__ import annotations

__all__ = ["PipelineCancelled", "PipelineInputError"]


class PipelineInputError(ValueError):
    """Input the user must fix. ``code`` is a stable machine-readable reason, ``details`` extra JSON data."""

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


class PipelineCancelled(Exception):
    """Raised inside the pipeline when ``should_cancel()`` turned true."""
