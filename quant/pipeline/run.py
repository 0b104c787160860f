"""``run_pipeline``: one quantization job from config to result, as the list of its stages.

Stages (``quant.config.STAGES``): ``load`` -> ``calibrate`` -> ``sensitivity`` -> ``latency`` -> ``allocate`` ->
``reconstruct`` -> ``evaluate`` -> ``export``, one module each in this package. Each finished stage's JSON-able output
is saved to a ``StageStore`` (tensors as content-addressed blobs); a stage whose output the store already has is
skipped, which is how a restarted job resumes and how a re-allocation reuses a parent job's parameter table,
sensitivity table and latency table. Data flows through values: the ``calibrate`` stage's parameter table is the one
place quantization parameters live; reconstruction's refined params are written into it; the model is assembled
from its chosen entries for evaluation and export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import PipelineConfig
from ..layer_costs import profile_layers
from ..presets import resolve_preset
from ..ptq import PTQ_METHODS
from ..wrap import load_params_
from .calibrate import calibrate_stage
from .evaluate import evaluate_stage
from .export import export_onnx_checked, public_config
from .latency import latency_report, latency_stage, latency_table
from .load import load_job, load_output, resolve_device
from .reconstruct import reconstruct_stage
from .runner import ProgressCallback, StageRunner
from .store import InMemoryStageStore, StageStore

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
    method = config.method
    torch.manual_seed(config.seed)

    job = load_job(config, device)
    runner.stage("load", lambda: load_output(job))
    prepared = calibrate_stage(runner, job)
    qmodel, table = prepared.qmodel, prepared.table
    profiles = profile_layers(qmodel, job.input_shape)

    sensitivity = None
    if method.budgets:
        from ..sensitivity import sensitivity_stage

        sensitivity = runner.stage(
            "sensitivity", lambda: sensitivity_stage(qmodel, table, job.calib, config,
                                                     lambda f: runner.report("sensitivity", f)))
    else:
        runner.stage("sensitivity", lambda: {"skipped": True, "reason": "uniform precision (no budgets)"})
    latency = latency_table(runner.stage("latency", lambda: latency_stage(qmodel, job.input_shape, config, runner)))
    from ..allocation import allocate_stage, uniform_allocation

    if method.budgets:
        allocation_out = runner.stage(
            "allocate", lambda: allocate_stage(qmodel, table, job.calib, profiles, sensitivity, config,
                                               lambda f: runner.report("allocate", f), latency=latency))
    else:
        allocation_out = runner.stage("allocate", lambda: uniform_allocation(qmodel, config, latency))
    chosen = {name: (int(e["wbits"]), int(e["abits"])) for name, e in allocation_out["allocation"].items()}
    load_params_(qmodel, table.select(chosen))

    refined = reconstruct_stage(runner, job, qmodel)
    table = table.with_entries({name: {chosen[name]: params} for name, params in refined.items()})
    load_params_(qmodel, table.select(chosen))

    metrics_out = runner.stage("evaluate", lambda: evaluate_stage(qmodel, job.float_model, job.calib, job.evaluation,
                                                                  profiles, config))
    metrics = dict(metrics_out["metrics"])
    if allocation_out.get("predicted_loss") is not None:
        metrics["predicted_kl"] = allocation_out["predicted_loss"]  # sum of Omega of the assignment (nats/image)
    if allocation_out.get("predicted_latency_ms") is not None:
        metrics["predicted_latency_ms"] = allocation_out["predicted_latency_ms"]  # table: rest + layers, batch 1
    artifact_dir = Path(output_dir) if output_dir is not None else None
    result = PipelineResult(
        metrics=metrics, allocation=allocation_out["allocation"],
        sensitivity=sensitivity if sensitivity and not sensitivity.get("skipped") else None,
        budgets=allocation_out.get("budgets", {}), timings={}, stages=runner.outputs, artifact_dir=artifact_dir,
        warnings=list(runner.outputs["load"].get("warnings", job.warnings)),
    )

    def current_timings() -> dict[str, float]:
        timings = {name: float(out.get("seconds") or 0.0) for name, out in runner.outputs.items()}
        timings["load"] = float(runner.outputs["load"].get("load_seconds", timings.get("load", 0.0)))
        return timings

    result.timings = current_timings()

    def export_stage() -> dict:
        if artifact_dir is None:
            return {"skipped": True, "reason": "no output folder"}
        from ..bundle import save_bundle
        from ..report_html import write_report_html

        recipe = PTQ_METHODS[method.quantizer]
        artifact_dir.mkdir(parents=True, exist_ok=True)
        files = ["model.safetensors", "quant_config.json", "report.json", "report.html"]
        deployment = None
        pareto = [dict(p) for p in allocation_out.get("pareto") or []]
        if config.export_onnx:
            deployment = export_onnx_checked(qmodel, table, chosen, artifact_dir / "model.onnx", job.input_shape,
                                             job.evaluation or job.calib, config, allocation_out, pareto,
                                             lambda f, m: runner.report("export", f, m))
            files.append("model.onnx")
            if deployment is not None:
                result.metrics["deployment"] = deployment
        public = {key: value for key, value in result.to_dict().items() if key != "artifact_dir"}
        report = {"config": public_config(config), **public, "reparam": [asdict(r) for r in prepared.reparam]}
        for point in pareto:
            point.pop("assignment", None)
        report["pareto"] = pareto
        if latency is not None:
            report["latency"] = latency_report(latency, allocation_out, deployment)
        save_bundle(qmodel, artifact_dir, model_spec=config.model.model_dump(),
                    recipe={"softmax": recipe.softmax, "minmax": recipe.minmax}, report=report)
        write_report_html(report, artifact_dir / "report.html")
        return {"files": files, **({"deployment": deployment} if deployment else {})}

    start = time.perf_counter()
    runner.stage("export", export_stage)
    del start
    result.timings = current_timings()
    result.stages = runner.outputs
    return result
