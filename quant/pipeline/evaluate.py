"""The ``evaluate`` stage: metrics of the artifact the job returns (its bundle, written and reloaded on the device)."""

from __future__ import annotations

import tempfile

import torch
from torch import nn

from ..config import PipelineConfig
from ..data import ImageSet
from ..evaluate import compare_logits, predict_logits
from ..layer_costs import LayerProfile, bits_summary
from ..ptq import PTQ_METHODS

__all__ = ["cross_entropy", "evaluate_stage", "reloaded_artifact"]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """Mean cross-entropy (nats per image) of ``logits`` [N, classes] against ``labels`` [N]; None without labels."""
    if labels is None or len(labels) == 0 or int(labels.max()) >= logits.shape[1]:
        return None
    logits = logits.float().cpu()
    return float(torch.nn.functional.cross_entropy(logits, labels.to(logits.device)))


def reloaded_artifact(qmodel: nn.Module, config: PipelineConfig, device: torch.device) -> tuple[nn.Module, str]:
    """The quantized model as the job's bundle gives it back: written to a temporary folder and reloaded with
    ``load_quantized(device=...)`` (``"bundle"``); the in-memory model (``"in_memory"``) when it cannot be written
    as a bundle (the export stage then reports why)."""
    from ..bundle import BundleError, load_quantized, save_bundle

    recipe = PTQ_METHODS[config.method.quantizer]
    with tempfile.TemporaryDirectory(prefix="mpq-eval-") as tmp:
        try:
            save_bundle(qmodel, tmp, model_spec=config.model.model_dump(),
                        recipe={"softmax": recipe.softmax, "minmax": recipe.minmax})
        except BundleError:
            return qmodel, "in_memory"
        return load_quantized(tmp, device=str(device)), "bundle"


def evaluate_stage(qmodel: nn.Module, float_model: nn.Module, calib: ImageSet, evaluation: ImageSet | None,
                   profiles: dict[str, LayerProfile], config: PipelineConfig) -> dict:
    """KL, top-1 and agreement against the float model on the evaluation images (calibration images without
    them), bits, size and BOPs of the assembled model."""
    images = evaluation if evaluation is not None else calib
    batch = config.data.batch_size
    float_logits = predict_logits(float_model, images.images, batch)
    artifact, evaluated = reloaded_artifact(qmodel, config, next(float_model.parameters()).device)
    quant_logits = predict_logits(artifact, images.images, batch)
    del artifact
    cmp = compare_logits(float_logits, quant_logits, images.labels)
    bits = bits_summary(qmodel, profiles)
    metrics = {
        "float": {"top1": cmp["float_top1"], "cross_entropy": cross_entropy(float_logits, images.labels)},
        "quantized": {"top1": cmp["top1"], "kl": cmp["kl"], "agreement": cmp["agreement"],
                      "cross_entropy": cross_entropy(quant_logits, images.labels)},
        "bits": {"weights_avg": bits["weights_avg"], "activations_avg": bits["activations_avg"]},
        "size_bytes": bits["weight_bytes"],
        "bops": bits["bops"],
        "evaluated_on": "evaluation" if evaluation is not None else "calibration",
        "evaluated_model": evaluated,
        "images": len(images),
    }
    return {"metrics": metrics}
