"""One quantization job from config to result: the pipeline shared by ``mpq quantize`` and service workers.

Stages (``quant.config.STAGES``): ``load`` -> ``sensitivity`` -> ``allocate`` -> ``reconstruct`` ->
``evaluate`` -> ``export``. Each finished stage's JSON-able output is saved to a ``StageStore``; a stage whose
output the store already has is skipped, which is how a restarted job resumes and how a re-allocation reuses a
parent job's sensitivity table. The PTQ preparation (wrapping, reparameterization, range calibration) is
deterministic for a seed and is redone on resume rather than stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .config import STAGES, PipelineConfig
from .data import DataLoadError, ImageSet, load_dataset
from .errors import PipelineCancelled, PipelineInputError
from .evaluate import compare_logits, predict_logits
from .models import BUILTIN_MODELS, ModelLoadError, build_model, model_info
from .presets import resolve_preset
from .profile import LayerProfile, bits_summary, profile_layers
from .ptq import PTQ_METHODS, quantize_ptq
from .validation import calibration_warning, check_finite_weights
from .validation import check_bits as _check_bits
from .wrap import forms_of, quant_layers, set_bits_, set_uniform_bits_

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

#: (stage, overall fraction 0..1, message)
ProgressCallback = Callable[[str, float, str], None]
_STAGE_SPAN = {"load": 0.05, "sensitivity": 0.22, "latency": 0.05, "allocate": 0.05, "reconstruct": 0.43,
               "evaluate": 0.12, "export": 0.08}


class StageStore(Protocol):
    """Where finished stage outputs live (the service backs this with the job's DB rows)."""

    workdir: Path

    def load(self, stage: str) -> dict | None: ...

    def save(self, stage: str, output: dict) -> None: ...


class InMemoryStageStore:
    """A ``StageStore`` kept in a dict (the command line's store); ``workdir`` is a temporary folder."""

    def __init__(self, workdir: Path | None = None, outputs: dict[str, dict] | None = None) -> None:
        import tempfile

        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mpq-"))
        self.outputs: dict[str, dict] = dict(outputs or {})

    def load(self, stage: str) -> dict | None:
        return self.outputs.get(stage)

    def save(self, stage: str, output: dict) -> None:
        self.outputs[stage] = json.loads(json.dumps(output))


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


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise PipelineInputError("invalid_device", f"unknown device {device!r}; use auto, cpu or cuda") from exc


# ---- loading and validation ------------------------------------------------------------------------------
def _load_model(config: PipelineConfig) -> nn.Module:
    spec = config.model
    if spec.name.startswith("builtin:"):
        if spec.name.removeprefix("builtin:") not in BUILTIN_MODELS:
            known = ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
            raise PipelineInputError("unknown_architecture",
                                     f"unknown built-in model {spec.name!r}; built-in models are {known}")
    else:
        import timm

        if not timm.is_model(spec.name):
            raise PipelineInputError(
                "unknown_architecture",
                f"unknown architecture {spec.name!r}; use builtin:vit-digits, builtin:swin-digits or a timm "
                "model name such as vit_small_patch16_224",
            )
        if spec.weights_path is None:
            raise PipelineInputError("missing_weights", f"model {spec.name!r} needs weights (a safetensors file)")
    try:
        model = build_model(spec.name, dict(spec.arch_kwargs), spec.weights_path)
        check_finite_weights(model)
        return model
    except ModelLoadError as exc:
        raise PipelineInputError("invalid_weights", str(exc)) from exc
    except TypeError as exc:
        raise PipelineInputError("invalid_arch_kwargs", f"invalid arch_kwargs for {spec.name!r}: {exc}") from exc


def _input_shape(config: PipelineConfig) -> tuple[int, int, int]:
    info = model_info(config.model.name, dict(config.model.arch_kwargs))
    return tuple(info["input_size"])


def _load_images(config: PipelineConfig, input_shape: tuple[int, int, int]) -> tuple[ImageSet, ImageSet | None]:
    data = config.data
    try:
        kwargs = {"model_name": config.model.name, "arch_kwargs": dict(config.model.arch_kwargs)}
        calib = load_dataset(data.source, split="calib", max_images=data.num_calibration, **kwargs)
        if data.eval_source is not None:
            evaluation: ImageSet | None = load_dataset(data.eval_source, split="test", **kwargs)
        elif data.source.startswith("builtin:"):
            evaluation = load_dataset(data.source, split="test", **kwargs)
        else:
            evaluation = None
    except DataLoadError as exc:
        raise PipelineInputError("invalid_data", str(exc)) from exc
    for label, images in (("calibration", calib), ("evaluation", evaluation)):
        if images is not None and tuple(images.images.shape[1:]) != tuple(input_shape):
            raise PipelineInputError(
                "invalid_data",
                f"{label} images have shape {list(images.images.shape[1:])} per image but the model expects "
                f"{list(input_shape)} (C, H, W); resize the images or set img_size in arch_kwargs",
            )
    n = min(data.num_calibration, len(calib))
    calib = ImageSet(calib.images[:n], None if calib.labels is None else calib.labels[:n])
    return calib, evaluation


def validate_config(config: PipelineConfig) -> list[dict[str, str]]:
    """Fast checks before a job is accepted (no weights loaded, no image decoded; see :mod:`quant.validation`):
    architecture, weights shapes from the safetensors header, data shapes, bits, budget feasibility.

    Raises ``PipelineInputError`` with a message that says what to fix; returns warnings ``[{"code", "message"}]``.
    """
    from .validation import validate_config as cheap_checks

    return cheap_checks(config)


# ---- the run --------------------------------------------------------------------------------------------
class _Run:
    def __init__(self, config, progress, store, should_cancel):
        self.config = config
        self.progress = progress
        self.store = store
        self.should_cancel = should_cancel
        self.timings: dict[str, float] = {}
        self.outputs: dict[str, dict] = {}

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise PipelineCancelled(f"cancelled during {stage}")
        if self.progress is None:
            return
        start = sum(_STAGE_SPAN[s] for s in STAGES[: STAGES.index(stage)])
        self.progress(stage, min(start + _STAGE_SPAN[stage] * max(min(fraction, 1.0), 0.0), 1.0), message)

    def stage(self, name: str, body: Callable[[], dict]) -> dict:
        stored = self.store.load(name)
        if stored is not None:
            self.outputs[name] = stored
            self.report(name, 1.0, "reused stored output")
            return stored
        self.report(name, 0.0, "started")
        start = time.perf_counter()
        output = body()
        self.timings[name] = time.perf_counter() - start
        output = {**output, "seconds": self.timings[name]}
        self.store.save(name, output)
        self.outputs[name] = output
        self.report(name, 1.0, "finished")
        return output


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
    run = _Run(config, progress, store or InMemoryStageStore(), should_cancel)
    method = config.method
    torch.manual_seed(config.seed)

    start = time.perf_counter()
    float_model = _load_model(config).to(device)
    input_shape = _input_shape(config)
    calib, evaluation = _load_images(config, input_shape)
    load_seconds = time.perf_counter() - start

    warnings = []
    if len(calib) < config.data.num_calibration:
        warnings.append({"code": "calibration_images_capped",
                         "message": calibration_warning(config.data.num_calibration, len(calib))})

    def load_stage() -> dict:
        return {
            "model": config.model.name,
            "input_shape": list(input_shape),
            "calibration_images": len(calib),
            "evaluation_images": len(evaluation) if evaluation is not None else 0,
            "device": str(device),
            "load_seconds": load_seconds,
            "warnings": warnings,
        }

    run.stage("load", load_stage)

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    # mixed jobs calibrate at a reference width (4 bits simulated); on a runtime target every job calibrates in
    # the int8 form, which every layer kind executes, and the allocate stage then sets each layer's form
    ref_w = method.wbits if not method.budgets else 4
    ref_a = method.abits if not method.budgets else 4
    ref_head = method.head_bits
    if method.target != "sim":
        ref_w = ref_a = ref_head = 8
    qmodel, reparam_reports = quantize_ptq(
        float_model, calib.images, method=method.quantizer, wbits=ref_w, abits=ref_a,
        head_bits=ref_head, batch_size=config.data.batch_size, range_search=method.range_search,
        target=method.target, block_size=method.block_size,
        progress=lambda step, frac: run.report("load", 0.5 + 0.5 * frac, step),
    )
    run.timings["calibrate"] = time.perf_counter() - start
    layers = quant_layers(qmodel)
    _check_bits(config, list(layers))
    profiles = profile_layers(qmodel, input_shape)

    sensitivity = None
    if method.budgets:
        from .sensitivity import sensitivity_stage

        sensitivity = run.stage(
            "sensitivity",
            lambda: sensitivity_stage(qmodel, float_model, calib, config, lambda f: run.report("sensitivity", f)),
        )
    else:
        run.stage("sensitivity", lambda: {"skipped": True, "reason": "uniform precision (no budgets)"})
    latency = _latency_table(run.stage("latency", lambda: _latency_stage(qmodel, input_shape, config, run)))
    if method.budgets:
        from .allocation import allocate_stage

        allocation_out = run.stage(
            "allocate",
            lambda: allocate_stage(qmodel, float_model, calib, profiles, sensitivity, config,
                                   lambda f: run.report("allocate", f), latency=latency),
        )
    else:
        allocation_out = run.stage("allocate", lambda: _uniform_allocation(qmodel, config, latency))
    set_bits_(qmodel, {name: (v["wbits"], v["abits"]) for name, v in allocation_out["allocation"].items()})

    reconstruct_out = run.stage("reconstruct", lambda: _reconstruct_stage(qmodel, float_model, calib, config, run))
    if config.method.reconstruct != "none" and reconstruct_out.get("seconds") is not None and \
            "reconstruct" not in run.timings:
        # the stage output was reused from the store (resume): re-apply the checkpointed blocks
        from .reconstruct import load_reconstructed_

        load_reconstructed_(qmodel, run.store.workdir)
    metrics_out = run.stage("evaluate", lambda: _evaluate_stage(qmodel, float_model, calib, evaluation, profiles,
                                                                config))

    artifact_dir = Path(output_dir) if output_dir is not None else None
    metrics = dict(metrics_out["metrics"])
    if allocation_out.get("predicted_loss") is not None:
        metrics["predicted_kl"] = allocation_out["predicted_loss"]  # sum of Omega of the assignment (nats/image)
    if allocation_out.get("predicted_latency_ms") is not None:
        metrics["predicted_latency_ms"] = allocation_out["predicted_latency_ms"]  # table: rest + layers, batch 1
    result = PipelineResult(
        metrics=metrics,
        allocation=allocation_out["allocation"],
        sensitivity=sensitivity if sensitivity and not sensitivity.get("skipped") else None,
        budgets=allocation_out.get("budgets", {}),
        timings={},
        stages=run.outputs,
        artifact_dir=artifact_dir,
        warnings=list(run.outputs["load"].get("warnings", warnings)),
    )

    def current_timings() -> dict[str, float]:
        timings = {name: float(out.get("seconds", 0.0)) for name, out in run.outputs.items()}
        timings["load"] = float(run.outputs["load"].get("load_seconds", timings.get("load", 0.0)))
        timings["calibrate"] = run.timings["calibrate"]
        return timings

    result.timings = current_timings()

    def export_stage() -> dict:
        if artifact_dir is None:
            return {"skipped": True, "reason": "no output folder"}
        from .bundle import save_bundle
        from .report_html import write_report_html

        recipe = PTQ_METHODS[method.quantizer]
        artifact_dir.mkdir(parents=True, exist_ok=True)
        files = ["model.safetensors", "quant_config.json", "report.json", "report.html"]
        deployment = None
        pareto = [dict(p) for p in allocation_out.get("pareto") or []]
        if config.export_onnx:
            deployment = _export_onnx(qmodel, artifact_dir / "model.onnx", input_shape, evaluation or calib,
                                      config, allocation_out, pareto, lambda f, m: run.report("export", f, m))
            files.append("model.onnx")
            if deployment is not None:
                result.metrics["deployment"] = deployment
        public = {key: value for key, value in result.to_dict().items() if key != "artifact_dir"}
        report = {"config": _public_config(config), **public, "reparam": [asdict(r) for r in reparam_reports]}
        for point in pareto:
            point.pop("assignment", None)
        report["pareto"] = pareto
        if latency is not None:
            report["latency"] = _latency_report(latency, allocation_out, deployment)
        save_bundle(qmodel, artifact_dir, model_spec=config.model.model_dump(),
                    recipe={"softmax": recipe.softmax, "minmax": recipe.minmax}, report=report)
        write_report_html(report, artifact_dir / "report.html")
        return {"files": files, **({"deployment": deployment} if deployment else {})}

    run.stage("export", export_stage)
    result.timings = current_timings()
    result.stages = run.outputs
    return result


def _public_config(config: PipelineConfig) -> dict:
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


def _uniform_allocation(qmodel: nn.Module, config: PipelineConfig, latency=None) -> dict:
    method = config.method
    set_uniform_bits_(qmodel, method.wbits, method.abits, method.head_bits,
                      fixed={k: tuple(v) for k, v in method.fixed_layers.items()})
    allocation = {name: {"wbits": layer.wbits, "abits": layer.abits} for name, layer in quant_layers(qmodel).items()}
    out = {"allocation": allocation, "budgets": {}, "mode": "uniform"}
    if latency is not None:
        forms = forms_of(qmodel)
        out["allocation"] = {name: {**bits, "form": forms[name]} for name, bits in allocation.items()}
        out["predicted_latency_ms"] = latency.predict(forms)
    return out


def _latency_stage(qmodel: nn.Module, input_shape, config: PipelineConfig, run: _Run) -> dict:
    """Measure (or reuse from the on-disk cache) every layer's latency in every form on the target runtime."""
    method = config.method
    if method.target == "sim":
        return {"skipped": True, "reason": "target sim: simulated bit-widths, no runtime to measure"}
    from .latency import profile_latency
    from .target.runtime import default_cache_dir

    table = profile_latency(qmodel, tuple(input_shape), block_size=method.block_size, forms_allowed=method.forms,
                            cache_dir=default_cache_dir(), progress=lambda f: run.report("latency", f))
    return {"table": table.to_dict(), "target": method.target}


def _latency_table(output: dict):
    """The ``LatencyTable`` of a latency stage output, None when the stage was skipped."""
    if not output.get("table"):
        return None
    from .latency import LatencyTable

    return LatencyTable.from_dict(output["table"])


def _latency_report(latency, allocation_out: dict, deployment: dict | None) -> dict:
    """The report's latency section: per-layer ms of the chosen form, predicted and measured totals."""
    allocation = allocation_out["allocation"]
    layers = {name: {"form": entry.get("form"), "ms": latency.ms(name, entry["form"]) if entry.get("form") else None,
                     "forms_ms": latency.layers.get(name, {})}
              for name, entry in allocation.items()}
    return {"key": latency.key, "fp32_ms": latency.fp32_ms, "rest_ms": latency.rest_ms,
            "predicted_ms": allocation_out.get("predicted_latency_ms"),
            "measured_ms": (deployment or {}).get("latency_ms"), "layers": layers}


def _export_onnx(qmodel, path: Path, input_shape, images: ImageSet, config: PipelineConfig, allocation_out: dict,
                 pareto: list[dict], progress) -> dict | None:
    """Write ``model.onnx``; for a runtime target also check it, compare onnxruntime with the torch simulation on
    ``images``, measure its latency and measure the sweep points marked ``measure`` (their exports are temporary).
    Returns the deployment summary (None for the ``sim`` target)."""
    from .onnx_export import export_onnx

    progress(0.1, "exporting model.onnx")
    export_onnx(qmodel, path, tuple(input_shape))
    if config.method.target == "sim":
        return None
    import tempfile

    from .target.deploy_check import check_onnx, compare_with_torch, measure_model_latency

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
        chosen = {name: (entry["wbits"], entry["abits"]) for name, entry in allocation_out["allocation"].items()}
        try:
            with tempfile.TemporaryDirectory(prefix="mpq-sweep-") as tmp:
                for index, point in enumerate(to_measure):
                    progress(0.6 + 0.4 * index / len(to_measure), f"measuring sweep point {index + 1}")
                    set_bits_(qmodel, {n: tuple(v) for n, v in point["assignment"].items()})
                    point_path = Path(tmp) / f"point{index}.onnx"
                    export_onnx(qmodel, point_path, tuple(input_shape))
                    point["measured_latency_ms"] = measure_model_latency(point_path, tuple(input_shape))["median_ms"]
        finally:
            set_bits_(qmodel, chosen)
    for point in pareto:
        if point.get("chosen"):
            point["measured_latency_ms"] = measured["median_ms"]
    return deployment


def _reconstruct_stage(qmodel, float_model, calib, config, run) -> dict:
    if config.method.reconstruct == "none":
        return {"skipped": True, "reason": "reconstruct=none"}
    from .reconstruct import reconstruct_stage  # FIMA-Q block reconstruction

    return reconstruct_stage(qmodel, float_model, calib, config, run.store.workdir,
                             lambda f, msg="": run.report("reconstruct", f, msg))


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """Mean cross-entropy (nats per image) of ``logits`` [N, classes] against ``labels`` [N]; None without labels."""
    if labels is None or len(labels) == 0 or int(labels.max()) >= logits.shape[1]:
        return None
    logits = logits.float().cpu()
    return float(torch.nn.functional.cross_entropy(logits, labels.to(logits.device)))


def _evaluate_stage(qmodel, float_model, calib: ImageSet, evaluation: ImageSet | None,
                    profiles: dict[str, LayerProfile], config: PipelineConfig) -> dict:
    images = evaluation if evaluation is not None else calib
    batch = config.data.batch_size
    float_logits = predict_logits(float_model, images.images, batch)
    # the metrics are those of the artifact the job returns: the bundle, written and reloaded on this device
    artifact, evaluated = _reloaded_artifact(qmodel, config, next(float_model.parameters()).device)
    quant_logits = predict_logits(artifact, images.images, batch)
    del artifact
    cmp = compare_logits(float_logits, quant_logits, images.labels)
    bits = bits_summary(qmodel, profiles)
    float_ce = _cross_entropy(float_logits, images.labels)
    quant_ce = _cross_entropy(quant_logits, images.labels)
    metrics = {
        "float": {"top1": cmp["float_top1"], "cross_entropy": float_ce},
        "quantized": {"top1": cmp["top1"], "kl": cmp["kl"], "agreement": cmp["agreement"],
                      "cross_entropy": quant_ce},
        "bits": {"weights_avg": bits["weights_avg"], "activations_avg": bits["activations_avg"]},
        "size_bytes": bits["weight_bytes"],
        "bops": bits["bops"],
        "evaluated_on": "evaluation" if evaluation is not None else "calibration",
        "evaluated_model": evaluated,
        "images": len(images),
    }
    return {"metrics": metrics}


def _reloaded_artifact(qmodel: nn.Module, config: PipelineConfig, device: torch.device) -> tuple[nn.Module, str]:
    """The quantized model as the job's bundle gives it back: written to a temporary folder and reloaded with
    ``load_quantized(device=...)`` (``"bundle"``); the in-memory model (``"in_memory"``) when it cannot be written
    as a bundle (the export stage then reports why)."""
    import tempfile

    from .bundle import BundleError, load_quantized, save_bundle

    recipe = PTQ_METHODS[config.method.quantizer]
    with tempfile.TemporaryDirectory(prefix="mpq-eval-") as tmp:
        try:
            save_bundle(qmodel, tmp, model_spec=config.model.model_dump(),
                        recipe={"softmax": recipe.softmax, "minmax": recipe.minmax})
        except BundleError:
            return qmodel, "in_memory"
        return load_quantized(tmp, device=str(device)), "bundle"
