"""One quantization job from config to result: the pipeline shared by ``mpq quantize`` and service workers.

``run`` holds ``run_pipeline`` (the list of stages); each stage has its own module (``load``, ``synthesize``,
``calibrate``, ``sensitivity``, ``latency``, ``allocate``, ``reconstruct``, ``evaluate``, ``export``; the methods behind them live in
``quant.calibration``, ``quant.sensitivity``, ``quant.allocation`` and ``quant.reconstruct``); ``runner`` is the
stage mechanism and ``store`` where stage outputs and blobs live.
"""

from ..errors import PipelineCancelled, PipelineInputError
from .load import resolve_device
from .run import PipelineResult, run_pipeline
from .runner import ProgressCallback
from .store import InMemoryStageStore, StageStore

__all__ = [
    "InMemoryStageStore",
    "PipelineCancelled",
    "PipelineInputError",
    "PipelineResult",
    "ProgressCallback",
    "StageStore",
    "resolve_device",
    "run_pipeline",
    "validate_config",
]


def validate_config(config):
    """Fast checks before a job is accepted (no weights loaded, no image decoded; see :mod:`quant.validation`):
    architecture, weights shapes from the safetensors header, data shapes, bits, budget feasibility.

    Raises ``PipelineInputError`` with a message that says what to fix; returns warnings ``[{"code", "message"}]``.
    """
    from ..validation import validate_config as cheap_checks

    return cheap_checks(config)
