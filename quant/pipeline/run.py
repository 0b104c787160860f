"""``run_pipeline``: one quantization job from config to result, as the list of its stages.

Stages (``quant.config.STAGES``): ``load`` -> ``synthesize`` (data-free jobs) -> ``calibrate`` -> ``sensitivity`` -> ``latency`` -> ``allocate`` ->
``reconstruct`` -> ``evaluate`` -> ``export``, one module each in this package. Each finished stage's JSON-able output
is saved to a ``StageStore`` (tensors as content-addressed blobs); a stage whose output the store already has is
skipped, which is how a restarted job resumes and how a re-allocation reuses a parent job's parameter table,
sensitivity table and latency table. Data flows through values: the ``calibrate`` stage's parameter table is the one
place quantization parameters live; reconstruction's refined params are written into it; the model is assembled
from its chosen entries for evaluation and export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import PipelineConfig
from ..layer_costs import profile_layers
from ..presets import resolve_preset
from ..wrap import load_params_
from .allocate import allocate_step, chosen_pairs
from .calibrate import calibrate_stage
from .evaluate import evaluate_stage
from .export import export_stage
from .latency import latency_stage, latency_table
from .load import load_job, load_output, resolve_device
from .reconstruct import reconstruct_stage
from .runner import ProgressCallback, StageRunner
from .sensitivity import sensitivity_step
from .store import InMemoryStageStore, StageStore
from .synthesize import accuracy_note, scored_calibration, synthesize_stage

__all__ = ["PipelineResult", "run_pipeline"]


@dataclass
class PipelineResult:
    """What a run produced. ``metrics`` has ``float`` and ``quantized`` sections plus ``bits``."""

    metrics: dict
    allocation: dict[str, dict]
    sensitivity: dict | None
    budgets: dict
    timings: dict[str, float]
    stages: dict[str, dict] = field(default_factory=dict)
    artifact_dir: Path | None = None
    #: Problems that did not stop the run: ``[{"code", "message"}]`` (e.g. fewer calibration images than asked).
    warnings: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["artifact_dir"] = str(self.artifact_dir) if self.artifact_dir else None
        return data


def run_pipeline(
    config: PipelineConfig,
    *,
    progress: ProgressCallback | None = None,
    store: StageStore | None = None,
    output_dir: str | Path | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> PipelineResult:
    """Run (or resume) a whole job and return its result; writes the bundle to ``output_dir`` when given."""
    device = resolve_device(config.device)
    config = resolve_preset(config, device)  # quick/paper settings the job did not give explicitly
    runner = StageRunner(config, progress, store or InMemoryStageStore(), should_cancel)
    torch.manual_seed(config.seed)

    job = load_job(config, device)
    runner.stage("load", lambda: load_output(job))
    synthesize_stage(runner, job)  # data-free jobs: sets job.calib
    prepared = calibrate_stage(runner, job)
    qmodel, table = prepared.qmodel, prepared.table
    profiles = profile_layers(qmodel, job.input_shape)
    sensitivity = sensitivity_step(runner, job, qmodel, table)
    latency = latency_table(runner.stage("latency", lambda: latency_stage(qmodel, job.input_shape, config, runner)))
    allocation_out = allocate_step(runner, job, qmodel, table, profiles, sensitivity, latency)
    chosen = chosen_pairs(allocation_out)
    load_params_(qmodel, table.select(chosen))
    refined = reconstruct_stage(runner, job, qmodel)
    table = table.with_entries({name: {chosen[name]: params} for name, params in refined.items()})
    load_params_(qmodel, table.select(chosen))
    metrics_out = runner.stage("evaluate", lambda: evaluate_stage(qmodel, job.float_model, scored_calibration(job),
                                                                  job.evaluation, profiles, config))

    result = PipelineResult(
        metrics={**_metrics(metrics_out, allocation_out), **accuracy_note(job)}, allocation=allocation_out["allocation"],
        sensitivity=sensitivity if sensitivity and not sensitivity.get("skipped") else None,
        budgets=allocation_out.get("budgets", {}), timings=_timings(runner), stages=runner.outputs,
        artifact_dir=Path(output_dir) if output_dir is not None else None,
        warnings=list(runner.outputs["load"].get("warnings", job.warnings)),
    )
    export_stage(runner, job, qmodel, table, chosen, allocation_out, latency, prepared.reparam, result,
                 result.artifact_dir)
    result.timings = _timings(runner)
    result.stages = runner.outputs
    return result


def _metrics(metrics_out: dict, allocation_out: dict) -> dict:
    """The evaluate stage's metrics plus the allocation's predictions."""
    metrics = dict(metrics_out["metrics"])
    if allocation_out.get("predicted_loss") is not None:
        metrics["predicted_kl"] = allocation_out["predicted_loss"]  # sum of Omega of the assignment (nats/image)
    if allocation_out.get("predicted_latency_ms") is not None:
        metrics["predicted_latency_ms"] = allocation_out["predicted_latency_ms"]  # table: rest + layers, batch 1
    return metrics


def _timings(runner: StageRunner) -> dict[str, float]:
    """Seconds per stage so far (``load`` counts the loading itself, not the stage bookkeeping)."""
    timings = {name: float(out.get("seconds") or 0.0) for name, out in runner.outputs.items()}
    timings["load"] = float(runner.outputs["load"].get("load_seconds", timings.get("load", 0.0)))
    return timings
