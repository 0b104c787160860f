"""Range calibration of a wrapped model from a set of calibration images."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .quantizers import ActivationQuantizer
from .wrap import quant_layers

__all__ = ["activation_quantizers", "calibrate_"]


def activation_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    """Every activation quantizer of a wrapped model, in forward order."""
    return [q for layer in quant_layers(model).values() for q in layer.activation_quantizers()]


@torch.no_grad()
def calibrate_(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Observe activations on float forward passes over ``batches`` ([B,3,H,W] each), then fit every range.

    Activation quantizers keep a bounded sample so that later bit changes refit without another pass;
    weight quantizers search their per-channel ranges from the weights themselves.
    """
    quantizers = activation_quantizers(model)
    for quantizer in quantizers:
        quantizer.sample = torch.empty(0, device=quantizer.observed_min.device)
        quantizer._fitted = {}
        quantizer.observed_min.fill_(float("inf"))
        quantizer.observed_max.fill_(float("-inf"))
        if hasattr(quantizer, "product_maps"):
            quantizer.product_maps = torch.empty(0, device=quantizer.observed_min.device)
        quantizer.observing = True
    try:
        for index, images in enumerate(batches):
            model(images)
            if progress is not None:
                progress(index)
    finally:
        for quantizer in quantizers:
            quantizer.observing = False
    for quantizer in quantizers:
        quantizer.finalize()
    for layer in quant_layers(model).values():
        if layer.has_weight:
            layer.weight_quantizer.forget()
            layer.weight_quantizer.calibrate(layer.weight)
