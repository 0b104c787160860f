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

from .config import ALLOWED_ABITS, ALLOWED_WBITS, STAGES, PipelineConfig
from .data import DataLoadError, ImageSet, load_dataset
from .evaluate import compare_logits, predict_logits
from .models import BUILTIN_MODELS, ModelLoadError, build_model, model_info
from .profile import LayerProfile, bits_summary, profile_layers
from .ptq import PTQ_METHODS, quantize_ptq
from .wrap import quant_layers, set_bits_, set_uniform_bits_

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
_STAGE_SPAN = {"load": 0.05, "sensitivity": 0.25, "allocate": 0.05, "reconstruct": 0.45, "evaluate": 0.15,
               "export": 0.05}


class PipelineInputError(ValueError):
    """Input the user must fix. ``code`` is a stable machine-readable reason, ``details`` extra JSON data."""

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


class PipelineCancelled(Exception):
    """Raised inside the pipeline when ``should_cancel()`` turned true."""


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
        return build_model(spec.name, dict(spec.arch_kwargs), spec.weights_path)
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
        calib = load_dataset(data.source, split="calib", **kwargs)
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


def _check_bits(config: PipelineConfig, layer_names: list[str]) -> None:
    method = config.method
    for bits in method.candidate_wbits:
        if bits not in ALLOWED_WBITS:
            raise PipelineInputError("invalid_bits", f"candidate weight bits {bits} not in {ALLOWED_WBITS}")
    for bits in method.candidate_abits:
        if bits not in ALLOWED_ABITS:
            raise PipelineInputError("invalid_bits", f"candidate activation bits {bits} not in {ALLOWED_ABITS}")
    if method.head_bits is not None and method.head_bits not in ALLOWED_WBITS:
        raise PipelineInputError("invalid_bits", f"head_bits {method.head_bits} not in {ALLOWED_WBITS}")
    for name, (wbits, abits) in method.fixed_layers.items():
        if name not in layer_names:
            raise PipelineInputError(
                "unknown_layer", f"fixed layer {name!r} does not exist; layers are e.g. {layer_names[:4]}"
            )
        if wbits not in ALLOWED_WBITS or abits not in ALLOWED_ABITS:
            raise PipelineInputError("invalid_bits", f"fixed layer {name!r}: bits ({wbits}, {abits}) not allowed")


def validate_config(config: PipelineConfig) -> None:
    """Fast checks before a job is accepted: architecture, weights, data shapes, bits, budget feasibility.

    Raises ``PipelineInputError`` with a message that says what to fix.
    """
    from .wrap import wrap_model_

    model = _load_model(config)
    input_shape = _input_shape(config)
    _load_images(config, input_shape)
    wrapped = wrap_model_(model, softmax="uniform")
    profiles = profile_layers(wrapped, input_shape)
    _check_bits(config, list(profiles))
    if config.method.budgets:
        from .allocation import check_budgets_feasible

        check_budgets_feasible(profiles, config.method)


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
    run = _Run(config, progress, store or InMemoryStageStore(), should_cancel)
    method = config.method
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    start = time.perf_counter()
    float_model = _load_model(config).to(device)
    input_shape = _input_shape(config)
    calib, evaluation = _load_images(config, input_shape)
    load_seconds = time.perf_counter() - start

    def load_stage() -> dict:
        return {
            "model": config.model.name,
            "input_shape": list(input_shape),
            "calibration_images": len(calib),
            "evaluation_images": len(evaluation) if evaluation is not None else 0,
            "device": str(device),
            "load_seconds": load_seconds,
        }

    run.stage("load", load_stage)

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    ref_w = method.wbits if not method.budgets else 4
    ref_a = method.abits if not method.budgets else 4
    qmodel, reparam_reports = quantize_ptq(
        float_model, calib.images, method=method.quantizer, wbits=ref_w, abits=ref_a,
        head_bits=method.head_bits, batch_size=config.data.batch_size,
        progress=lambda step, frac: run.report("load", 0.5 + 0.5 * frac, step),
    )
    run.timings["calibrate"] = time.perf_counter() - start
    layers = quant_layers(qmodel)
    _check_bits(config, list(layers))
    profiles = profile_layers(qmodel, input_shape)

    sensitivity = None
    if method.budgets:
        from .allocation import allocate_stage
        from .sensitivity import sensitivity_stage

        sensitivity = run.stage(
            "sensitivity",
            lambda: sensitivity_stage(qmodel, float_model, calib, config, lambda f: run.report("sensitivity", f)),
        )
        allocation_out = run.stage(
            "allocate",
            lambda: allocate_stage(qmodel, float_model, calib, profiles, sensitivity, config,
                                   lambda f: run.report("allocate", f)),
        )
    else:
        run.stage("sensitivity", lambda: {"skipped": True, "reason": "uniform precision (no budgets)"})
        allocation_out = run.stage("allocate", lambda: _uniform_allocation(qmodel, config))
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
    result = PipelineResult(
        metrics=metrics,
        allocation=allocation_out["allocation"],
        sensitivity=sensitivity if sensitivity and not sensitivity.get("skipped") else None,
        budgets=allocation_out.get("budgets", {}),
        timings={},
        stages=run.outputs,
        artifact_dir=artifact_dir,
    )

    def current_timings() -> dict[str, float]:
        timings = {name: float(out.get("seconds", 0.0)) for name, out in run.outputs.items()}
        timings["calibrate"] = run.timings["calibrate"]
        return timings

    result.timings = current_timings()

    def export_stage() -> dict:
        if artifact_dir is None:
            return {"skipped": True, "reason": "no output folder"}
        from .bundle import save_bundle
        from .report_html import write_report_html

        recipe = PTQ_METHODS[method.quantizer]
        report = {"config": config.model_dump(mode="json"), **result.to_dict(),
                  "reparam": [asdict(r) for r in reparam_reports]}
        save_bundle(qmodel, artifact_dir, model_spec=config.model.model_dump(),
                    recipe={"softmax": recipe.softmax, "minmax": recipe.minmax}, report=report)
        files = ["model.safetensors", "quant_config.json", "report.json"]
        write_report_html(report, artifact_dir / "report.html")
        files.append("report.html")
        if config.export_onnx:
            from .onnx_export import export_onnx

            export_onnx(qmodel, artifact_dir / "model.onnx", input_shape)
            files.append("model.onnx")
        return {"path": str(artifact_dir), "files": files}

    run.stage("export", export_stage)
    result.timings = current_timings()
    result.stages = run.outputs
    return result


def _uniform_allocation(qmodel: nn.Module, config: PipelineConfig) -> dict:
    method = config.method
    set_uniform_bits_(qmodel, method.wbits, method.abits, method.head_bits)
    if method.fixed_layers:
        set_bits_(qmodel, {k: tuple(v) for k, v in method.fixed_layers.items()})
    allocation = {name: {"wbits": layer.wbits, "abits": layer.abits} for name, layer in quant_layers(qmodel).items()}
    return {"allocation": allocation, "budgets": {}, "mode": "uniform"}


def _reconstruct_stage(qmodel, float_model, calib, config, run) -> dict:
    if config.method.reconstruct == "none":
        return {"skipped": True, "reason": "reconstruct=none"}
    from .reconstruct import reconstruct_stage  # FIMA-Q block reconstruction

    return reconstruct_stage(qmodel, float_model, calib, config, run.store.workdir,
                             lambda f, msg="": run.report("reconstruct", f, msg))


def _evaluate_stage(qmodel, float_model, calib: ImageSet, evaluation: ImageSet | None,
                    profiles: dict[str, LayerProfile], config: PipelineConfig) -> dict:
    images = evaluation if evaluation is not None else calib
    batch = config.data.batch_size
    float_logits = predict_logits(float_model, images.images, batch)
    quant_logits = predict_logits(qmodel, images.images, batch)
    cmp = compare_logits(float_logits, quant_logits, images.labels)
    bits = bits_summary(qmodel, profiles)
    metrics = {
        "float": {"top1": cmp["float_top1"]},
        "quantized": {"top1": cmp["top1"], "kl": cmp["kl"], "agreement": cmp["agreement"]},
        "bits": {"weights_avg": bits["weights_avg"], "activations_avg": bits["activations_avg"]},
        "size_bytes": bits["weight_bytes"],
        "bops": bits["bops"],
        "evaluated_on": "evaluation" if evaluation is not None else "calibration",
        "images": len(images),
    }
    return {"metrics": metrics}
