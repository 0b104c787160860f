"""Checks of an exported deployment graph: ``onnx.checker``, onnxruntime logits against the torch simulation,
and the whole model's onnxruntime latency.

Sessions come from ``quant.deploy.onnxruntime_cpu.runtime.make_session`` (the options the latency table is measured with), so
the latency measured here is comparable with the table's prediction.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...evaluate import predict_logits
from .runtime import make_session, runtime_fingerprint, time_runs

__all__ = ["DeployCheckError", "check_onnx", "compare_with_torch", "measure_model_latency"]


class DeployCheckError(RuntimeError):
    """An exported graph that is missing, fails ``onnx.checker`` or cannot be run; the message says which."""


def check_onnx(path: str | Path) -> None:
    """Run ``onnx.checker.check_model(full_check=True)`` (type and shape inference included) on the file.

    The path is handed to the checker (not a loaded proto), so models above the 2 GB protobuf limit with
    external data are checked too. Raises ``DeployCheckError`` when the file is missing or fails a check.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise DeployCheckError(f"ONNX file {path} does not exist; export the model first")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DeployCheckError(f"{path.name} fails onnx.checker: {exc}") from exc


def _session(onnx_path: str | Path):
    path = Path(onnx_path)
    if not path.is_file():
        raise DeployCheckError(f"ONNX file {path} does not exist; export the model first")
    try:
        return make_session(path)
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise DeployCheckError(f"onnxruntime cannot load {path.name}: {exc}") from exc


def _torch_logits(qmodel: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``qmodel`` evaluated on the CPU (a CPU copy when it lives elsewhere; it is not modified)."""
    param = next(qmodel.parameters(), None)
    model = qmodel if param is None or param.device.type == "cpu" else copy.deepcopy(qmodel).cpu()
    return predict_logits(model, images, batch_size)


def compare_with_torch(onnx_path: str | Path, qmodel: nn.Module, images: torch.Tensor,
                       labels: torch.Tensor | None = None, batch_size: int = 64) -> dict:
    """onnxruntime logits of the exported graph against the torch logits of ``qmodel`` (in eval mode; run on
    the CPU).

    images: float32 ``[N, C, H, W]`` normalised for the model; labels: int64 ``[N]`` or None; batch_size: images
    per run (both runtimes). Returns ``images`` (N), ``onnx_top1``/``torch_top1`` (% correct vs the labels; None
    without labels), ``top1_diff`` (onnx - torch, points; None without labels), ``agreement`` (% of images where
    both predict the same class), ``max_abs_diff`` (largest absolute logit difference), ``mean_abs_diff`` and
    ``kl`` (mean KL(torch || onnxruntime) of the softmax distributions, nats). Raises ``DeployCheckError`` when
    the graph cannot be loaded or run on these images.
    """
    if images.dim() != 4 or len(images) == 0:
        raise DeployCheckError(f"images must be a non-empty [N, C, H, W] tensor; got shape {tuple(images.shape)}")
    if labels is not None and len(labels) != len(images):
        raise DeployCheckError(f"{len(labels)} labels for {len(images)} images")
    images = images.detach().float().cpu()
    session = _session(onnx_path)
    name = session.get_inputs()[0].name
    try:
        outs = [session.run(None, {name: images[i : i + batch_size].numpy()})[0]
                for i in range(0, len(images), batch_size)]
    except Exception as exc:  # onnxruntime's own exception types
        raise DeployCheckError(f"onnxruntime failed to run {Path(onnx_path).name}: {exc}") from exc
    ort_logits = torch.from_numpy(np.concatenate(outs)).float()
    torch_logits = _torch_logits(qmodel, images, batch_size)
    if ort_logits.shape != torch_logits.shape:
        raise DeployCheckError(f"onnxruntime logits {tuple(ort_logits.shape)} differ in shape from torch's "
                               f"{tuple(torch_logits.shape)}")
    ort_pred, torch_pred = ort_logits.argmax(1), torch_logits.argmax(1)
    diff = (ort_logits - torch_logits).abs()
    kl = F.kl_div(F.log_softmax(ort_logits, 1), F.log_softmax(torch_logits, 1), log_target=True,
                  reduction="batchmean")
    result: dict = {
        "images": len(images),
        "onnx_top1": None,
        "torch_top1": None,
        "top1_diff": None,
        "agreement": 100.0 * (ort_pred == torch_pred).float().mean().item(),
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "kl": max(kl.item(), 0.0),
    }
    if labels is not None:
        labels = labels.cpu()
        result["onnx_top1"] = 100.0 * (ort_pred == labels).float().mean().item()
        result["torch_top1"] = 100.0 * (torch_pred == labels).float().mean().item()
        result["top1_diff"] = result["onnx_top1"] - result["torch_top1"]
    return result


def measure_model_latency(onnx_path: str | Path, input_shape: tuple[int, ...], repeats: int = 30,
                          warmup: int = 5) -> dict:
    """Whole-model onnxruntime latency at batch 1.

    input_shape: ``(C, H, W)`` (or ``(1, C, H, W)``); the input is a fixed-seed standard normal image.
    repeats/warmup: timed and untimed ``Run`` calls. Returns ``median_ms``, ``p10_ms``, ``p90_ms``, ``min_ms``
    (milliseconds per image), ``repeats``, ``warmup`` and ``runtime`` (``runtime_fingerprint()``: version, CPU,
    ISA, threads). Raises ``DeployCheckError`` for a bad shape, count or graph.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise DeployCheckError(f"input_shape must be (C, H, W) or (1, C, H, W); got {tuple(input_shape)}")
    if repeats < 1 or warmup < 0:
        raise DeployCheckError(f"repeats must be >= 1 and warmup >= 0; got {repeats} and {warmup}")
    session = _session(onnx_path)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32)}
    try:
        times = sorted(time_runs(lambda: session.run(None, feed), warmup=warmup, repeats=repeats))
    except Exception as exc:  # onnxruntime's own exception types
        raise DeployCheckError(f"onnxruntime failed to run {Path(onnx_path).name} on {(1, *shape)}: {exc}") from exc
    return {
        "median_ms": statistics.median(times),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": times[0],
        "repeats": repeats,
        "warmup": warmup,
        "runtime": runtime_fingerprint(),
    }
