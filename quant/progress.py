"""How much of the progress bar each pipeline stage gets, from the job's configuration.

The bar is split into consecutive segments, one per stage of ``quant.config.STAGES`` in run order. A segment's weight
is a rough share of the run's time for that configuration: stages that will not run (``reconstruct=none``, no
budgets, the ``sim`` target) get none, and the calibration (the parameter table: a search at every candidate width
of a mixed repq/dopq job) gets a large one. With fixed shares a quick dopq job sat at 5 % for 80 % of its run while
its ETA grew from 42 s to 244 s.
"""

from __future__ import annotations

from .config import STAGES, PipelineConfig

__all__ = ["progress_segments"]

#: Weight of a stage this module does not know (a stage added later), before normalization.
_DEFAULT_WEIGHT = 0.1


def _weights(config: PipelineConfig) -> dict[str, float]:
    from .ptq import resolve_range_search

    method = config.method
    mixed = bool(method.budgets)
    searched = resolve_range_search(method.quantizer, method.range_search) == "output"
    return {
        "load": 0.05,
        "synthesize": 0.30 if config.data.is_synthetic else 0.0,
        "calibrate": (0.30 if searched else 0.05) * (1.6 if mixed else 1.0),
        "sensitivity": 0.25 if mixed else 0.0,
        "latency": 0.15 if method.target != "sim" else 0.0,
        "allocate": (0.02 + 0.15 * min(method.iterative_rounds, 3) / 3) if mixed else 0.0,
        "reconstruct": 0.45 if method.reconstruct != "none" else 0.0,
        "evaluate": 0.12,
        "export": 0.03 + (0.10 if config.export_onnx else 0.0),
    }


def progress_segments(config: PipelineConfig) -> dict[str, tuple[float, float]]:
    """``{stage: (start, span)}`` covering 0..1 in run order (every stage of ``STAGES``)."""
    weights = _weights(config)
    total = sum(weights.get(name, _DEFAULT_WEIGHT) for name in STAGES)
    segments, start = {}, 0.0
    for name in STAGES:
        span = weights.get(name, _DEFAULT_WEIGHT) / total
        segments[name] = (start, span)
        start += span
    return segments
