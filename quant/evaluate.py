"""Evaluation of a quantized model against its float model: top-1, top-1 agreement and KL divergence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["compare_logits", "predict_logits"]


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Logits [N, classes] (float32, CPU) of ``model`` on ``images`` [N,3,H,W], evaluated in batches."""
    device = next(model.parameters()).device
    outputs = [model(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(outputs)


def compare_logits(
    float_logits: torch.Tensor, quant_logits: torch.Tensor, labels: torch.Tensor | None = None
) -> dict[str, float | None]:
    """Metrics of quantized vs float logits [N, classes].

    Returns ``top1`` (quantized accuracy in %, None without labels), ``float_top1`` (%), ``agreement``
    (% of samples where both predict the same class) and ``kl`` (mean KL(float || quantized) in nats).
    """
    float_pred, quant_pred = float_logits.argmax(1), quant_logits.argmax(1)
    kl = F.kl_div(F.log_softmax(quant_logits, 1), F.log_softmax(float_logits, 1), log_target=True, reduction="batchmean")
    metrics: dict[str, float | None] = {
        "top1": None,
        "float_top1": None,
        "agreement": 100.0 * (float_pred == quant_pred).float().mean().item(),
        "kl": kl.item(),
    }
    if labels is not None:
        metrics["top1"] = 100.0 * (quant_pred == labels).float().mean().item()
        metrics["float_top1"] = 100.0 * (float_pred == labels).float().mean().item()
    return metrics
