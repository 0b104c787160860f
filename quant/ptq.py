"""Post-training quantization recipes: minmax, RepQ-ViT style and DopQ-ViT style.

- ``minmax``: plain min/max ranges for every weight channel and activation; uniform post-softmax quantizer.
- ``repq``: RepQ-ViT: post-LayerNorm reparameterization with the mean layer-wise range, log2 post-softmax,
  MSE range searches for weights (per channel) and activations (per tensor).
- ``dopq``: DopQ-ViT: MAD-guided reparameterization (MOSF) and the TanQ post-softmax quantizer, same searches.

``range_search`` chooses how ranges are calibrated on top of the recipe: ``minmax`` is the fast calibration
above (one observation pass, ranges from the weights / a value sample); ``output`` then refines every weight and
uniform activation range by the error it causes in the layer's output, with per-token-position scales for
linear inputs and per-head scales for q, k and v (``quant.range_search``). ``auto`` (the default) is ``output``
for repq and dopq and ``minmax`` for the minmax recipe, whose meaning is plain min/max ranges.

``target="onnxruntime-cpu"`` keeps the recipe's reparameterization (it only changes float weights and LayerNorms)
but quantizes the post-softmax map with a plain uniform quantizer, and the output-aware search then keeps
per-tensor activation ranges (onnxruntime has no per-position or per-head scales); see ``quant.wrap``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .calibrate import calibrate_
from .range_search import RANGE_SEARCHES, SearchSettings, search_ranges_
from .reparam import ReparamReport, reparameterize_
from .wrap import set_quant_enabled_, set_uniform_bits_, wrap_model_

__all__ = ["PTQ_METHODS", "PTQRecipe", "quantize_ptq", "resolve_range_search"]


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


def resolve_range_search(method: str, range_search: str = "auto") -> str:
    """``minmax`` or ``output`` for a recipe: ``auto`` is ``output`` except for the minmax recipe."""
    if range_search == "auto":
        return "minmax" if method == "minmax" else "output"
    if range_search not in RANGE_SEARCHES:
        raise ValueError(f"range_search must be 'auto' or one of {', '.join(RANGE_SEARCHES)}, got {range_search!r}")
    return range_search


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
    range_search: str = "auto",
    search_settings: SearchSettings | None = None,
    progress: Callable[[str, float], None] | None = None,
    target: str = "sim",
    block_size: int = 32,
) -> tuple[nn.Module, list[ReparamReport]]:
    """Return a calibrated fake-quantized copy of ``float_model`` (the input model is not modified).

    calib_images: float [N,3,H,W], normalised for the model. wbits/abits: uniform bit-widths (16 = float);
    the patch embedding and head get ``head_bits`` (None = same as the rest). range_search: ``auto``,
    ``minmax`` (fast calibration only) or ``output`` (output-aware search, see the module doc). target /
    block_size: deployment target and weight block size (``quant.wrap.wrap_model_``); in a target mode
    ``(wbits, abits)`` and ``head_bits`` must name forms the target executes.
    """
    if method not in PTQ_METHODS:
        raise ValueError(f"unknown PTQ method {method!r}; choose one of {', '.join(PTQ_METHODS)}")
    search = resolve_range_search(method, range_search)
    recipe = PTQ_METHODS[method]
    device = next(float_model.parameters()).device
    model = wrap_model_(copy.deepcopy(float_model).eval(), softmax=recipe.softmax, minmax=recipe.minmax,
                        target=target, block_size=block_size)
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
    if search == "output":
        grouped = target == "sim"  # runtimes execute per-tensor activation scales only
        search_ranges_(model, calib_images, settings=search_settings, batch_size=batch_size,
                       per_position=grouped, per_head=grouped,
                       progress=(lambda f: progress("range search", f)) if progress else None)
    return model, reports
