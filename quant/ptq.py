"""Post-training quantization recipes: minmax, RepQ-ViT style and DopQ-ViT style.

- ``minmax``: plain min/max ranges for every weight channel and activation; uniform post-softmax quantizer.
- ``repq``: RepQ-ViT: post-LayerNorm reparameterization with the mean layer-wise range, log2 post-softmax,
  MSE range searches for weights (per channel) and activations (per tensor).
- ``dopq``: DopQ-ViT: MAD-guided reparameterization (MOSF) and the TanQ post-softmax quantizer, same searches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .calibrate import calibrate_
from .reparam import ReparamReport, reparameterize_
from .wrap import set_quant_enabled_, set_uniform_bits_, wrap_model_

__all__ = ["PTQ_METHODS", "PTQRecipe", "quantize_ptq"]


@dataclass(frozen=True)
class PTQRecipe:
    """Quantizer choices of a PTQ method."""

    softmax: str
    minmax: bool
    reparam: str | None


PTQ_METHODS: dict[str, PTQRecipe] = {
    "minmax": PTQRecipe(softmax="uniform", minmax=True, reparam=None),
    "repq": PTQRecipe(softmax="log2", minmax=False, reparam="mean"),
    "dopq": PTQRecipe(softmax="tanq", minmax=False, reparam="mad"),
}


def _batches(images: torch.Tensor, batch_size: int, device: torch.device):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size].to(device)


@torch.no_grad()
def quantize_ptq(
    float_model: nn.Module,
    calib_images: torch.Tensor,
    *,
    method: str = "dopq",
    wbits: int = 4,
    abits: int = 4,
    head_bits: int | None = 8,
    batch_size: int = 64,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[nn.Module, list[ReparamReport]]:
    """Return a calibrated fake-quantized copy of ``float_model`` (the input model is not modified).

    calib_images: float [N,3,H,W], normalised for the model. wbits/abits: uniform bit-widths (16 = float);
    the patch embedding and head get ``head_bits`` (None = same as the rest).
    """
    if method not in PTQ_METHODS:
        raise ValueError(f"unknown PTQ method {method!r}; choose one of {', '.join(PTQ_METHODS)}")
    recipe = PTQ_METHODS[method]
    device = next(float_model.parameters()).device
    model = wrap_model_(copy.deepcopy(float_model).eval(), softmax=recipe.softmax, minmax=recipe.minmax)
    set_uniform_bits_(model, wbits, abits, head_bits)
    reports: list[ReparamReport] = []
    if recipe.reparam is not None:
        set_quant_enabled_(model, False, False)
        reports = reparameterize_(model, _batches(calib_images, batch_size, device), mode=recipe.reparam)
        set_quant_enabled_(model, True, True)
        if progress:
            progress("reparameterize", 1.0)
    n_batches = max((len(calib_images) + batch_size - 1) // batch_size, 1)
    calibrate_(
        model,
        _batches(calib_images, batch_size, device),
        progress=(lambda i: progress("calibrate", (i + 1) / n_batches)) if progress else None,
    )
    return model, reports
