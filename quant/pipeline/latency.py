"""The ``latency`` stage: every layer's measured latency in every form on the target runtime (runtime targets)."""

from __future__ import annotations

from torch import nn

from ..config import PipelineConfig
from .runner import StageRunner

__all__ = ["latency_report", "latency_stage", "latency_table"]


def latency_stage(qmodel: nn.Module, input_shape, config: PipelineConfig, runner: StageRunner) -> dict:
    """Measure (or reuse from the on-disk cache) every layer's latency in every form on the target runtime."""
    method = config.method
    if method.target == "sim":
        return {"skipped": True, "reason": "target sim: simulated bit-widths, no runtime to measure"}
    from ..deploy.onnxruntime_cpu.latency import profile_latency
    from ..deploy.onnxruntime_cpu.runtime import default_cache_dir

    table = profile_latency(qmodel, tuple(input_shape), block_size=method.block_size, forms_allowed=method.forms,
                            cache_dir=default_cache_dir(), progress=lambda f: runner.report("latency", f))
    return {"table": table.to_dict(), "target": method.target}


def latency_table(output: dict):
    """The ``LatencyTable`` of a latency stage output, None when the stage was skipped."""
    if not output.get("table"):
        return None
    from ..deploy.onnxruntime_cpu.latency import LatencyTable

    return LatencyTable.from_dict(output["table"])


def latency_report(latency, allocation_out: dict, deployment: dict | None) -> dict:
    """The report's latency section: per-layer ms of the chosen form, predicted and measured totals."""
    allocation = allocation_out["allocation"]
    layers = {name: {"form": entry.get("form"), "ms": latency.ms(name, entry["form"]) if entry.get("form") else None,
                     "forms_ms": latency.layers.get(name, {})}
              for name, entry in allocation.items()}
    return {"key": latency.key, "fp32_ms": latency.fp32_ms, "rest_ms": latency.rest_ms,
            "predicted_ms": allocation_out.get("predicted_latency_ms"),
            "measured_ms": (deployment or {}).get("latency_ms"), "layers": layers}
