"""The ``export`` stage: the bundle, the reports, and (``export_onnx``) the ONNX graph with its deployment checks.

Everything is written from the model assembled with the chosen entries of the job's table. Measuring the sweep points
of a runtime target assembles each point from the same table, exports it to a temporary file and times it; the chosen
assignment is then assembled again from the table, so the bundle is the same whether sweep points were measured or
not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from torch import nn

from ..calibration import Pair, ParamTable
from ..config import PipelineConfig
from ..data import ImageSet
from ..ptq import PTQ_METHODS
from ..wrap import load_params_
from .latency import latency_report
from .load import LoadedJob
from .runner import StageRunner
from .synthesize import synthetic_report

__all__ = ["export_onnx_checked", "export_stage", "public_config"]

#: The bundle files every export writes (``model.onnx`` is added when asked for).
BUNDLE_FILES = ("model.safetensors", "quant_config.json", "report.json", "report.html")


def public_config(config: PipelineConfig) -> dict:
    """The config as the report shows it: files by name only (no server directory)."""
    data = config.model_dump(mode="json")

    def name_only(source: str | None) -> str | None:
        if source is None or source.startswith("builtin:"):
            return source
        prefix = "folder:" if source.startswith("folder:") else ""
        return prefix + Path(source.removeprefix(prefix)).name

    data["model"]["weights_path"] = name_only(data["model"].get("weights_path"))
    data["data"]["source"] = name_only(data["data"].get("source"))
    data["data"]["eval_source"] = name_only(data["data"].get("eval_source"))
    return data


def export_onnx_checked(qmodel: nn.Module, table: ParamTable, chosen: dict[str, Pair], path: Path, input_shape,
                        images: ImageSet, config: PipelineConfig, allocation_out: dict, pareto: list[dict],
                        progress: Callable[[float, str], None]) -> dict | None:
    """Write ``model.onnx``; for a runtime target also check it, compare onnxruntime with the torch simulation on
    ``images``, measure its latency and measure the sweep points marked with an ``assignment`` (their exports are
    temporary). Returns the deployment summary (None for the ``sim`` target)."""
    from ..export import export_onnx

    progress(0.1, "exporting model.onnx")
    export_onnx(qmodel, path, tuple(input_shape))
    if config.method.target == "sim":
        return None
    from ..deploy.onnxruntime_cpu.check import check_onnx, compare_with_torch, measure_model_latency

    check_onnx(path)
    progress(0.3, "comparing onnxruntime with the simulation")
    agreement = compare_with_torch(path, qmodel, images.images, images.labels, config.data.batch_size)
    progress(0.5, "measuring onnxruntime latency")
    measured = measure_model_latency(path, tuple(input_shape))
    predicted = allocation_out.get("predicted_latency_ms")
    deployment = {"runtime": config.method.target, "checked": True, **agreement,
                  "latency_ms": measured["median_ms"], "latency": measured,
                  "predicted_latency_ms": predicted,
                  "prediction_error": (predicted / measured["median_ms"] - 1.0) if predicted and
                  measured["median_ms"] else None}
    to_measure = [p for p in pareto if p.get("assignment")]
    if to_measure:
        try:
            with tempfile.TemporaryDirectory(prefix="mpq-sweep-") as tmp:
                for index, point in enumerate(to_measure):
                    progress(0.6 + 0.4 * index / len(to_measure), f"measuring sweep point {index + 1}")
                    load_params_(qmodel, table.select({n: tuple(v) for n, v in point["assignment"].items()}))
                    point_path = Path(tmp) / f"point{index}.onnx"
                    export_onnx(qmodel, point_path, tuple(input_shape))
                    point["measured_latency_ms"] = measure_model_latency(point_path, tuple(input_shape))["median_ms"]
        finally:
            load_params_(qmodel, table.select(chosen))
    for point in pareto:
        if point.get("chosen"):
            point["measured_latency_ms"] = measured["median_ms"]
    return deployment


def export_stage(runner: StageRunner, job: LoadedJob, qmodel: nn.Module, table: ParamTable, chosen: dict[str, Pair],
                 allocation_out: dict, latency, reparam: list, result, output_dir: Path | None) -> None:
    """Run the stage: write the bundle (and ``model.onnx`` when asked) of the model assembled from ``chosen`` into
    ``output_dir``; skipped without one. ``result`` is the run's ``PipelineResult``: its metrics gain the deployment
    summary, and its JSON form is the report."""
    config = job.config

    def body() -> dict:
        if output_dir is None:
            return {"skipped": True, "reason": "no output folder"}
        from ..bundle import save_bundle
        from ..report_html import write_report_html

        output_dir.mkdir(parents=True, exist_ok=True)
        files = list(BUNDLE_FILES)
        deployment = None
        pareto = [dict(p) for p in allocation_out.get("pareto") or []]
        if config.export_onnx:
            deployment = export_onnx_checked(qmodel, table, chosen, output_dir / "model.onnx", job.input_shape,
                                             job.evaluation or job.calib, config, allocation_out, pareto,
                                             lambda f, m: runner.report("export", f, m))
            files.append("model.onnx")
            if deployment is not None:
                result.metrics["deployment"] = deployment
        public = {key: value for key, value in result.to_dict().items() if key != "artifact_dir"}
        report = {"config": public_config(config), **public, "reparam": [asdict(r) for r in reparam],
                  **synthetic_report(job, runner.outputs)}
        for point in pareto:
            point.pop("assignment", None)
        report["pareto"] = pareto
        if latency is not None:
            report["latency"] = latency_report(latency, allocation_out, deployment)
        recipe = PTQ_METHODS[config.method.quantizer]
        save_bundle(qmodel, output_dir, model_spec=config.model.model_dump(),
                    recipe={"softmax": recipe.softmax, "minmax": recipe.minmax}, report=report)
        write_report_html(report, output_dir / "report.html")
        return {"files": files, **({"deployment": deployment} if deployment else {})}

    runner.stage("export", body)
