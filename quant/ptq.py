"""Post-training quantization recipes (minmax, RepQ-ViT style, DopQ-ViT style) and the one-call PTQ entry points.

- ``minmax``: plain min/max ranges for every weight channel and activation; uniform post-softmax quantizer.
- ``repq``: RepQ-ViT: post-LayerNorm reparameterization with the mean layer-wise range, log2 post-softmax,
  MSE range fits for weights (per channel) and activations (per tensor).
- ``dopq``: DopQ-ViT: MAD-guided reparameterization (MOSF) and the TanQ post-softmax quantizer, same fits.

``range_search`` chooses how ranges are calibrated on top of the recipe: ``minmax`` is the fast fit only;
``output`` then refines every weight and uniform activation range by the error it causes in the layer's output,
with per-token-position scales for linear inputs and per-head scales for q, k and v (``quant.calibration.search``).
``auto`` (the default) is ``output`` for repq and dopq and ``minmax`` for the minmax recipe, whose meaning is plain
min/max ranges.

``target="onnxruntime-cpu"`` keeps the recipe's reparameterization (it only changes float weights and LayerNorms)
but quantizes the post-softmax map with a plain uniform quantizer, and the search then keeps per-tensor activation
ranges (onnxruntime has no per-position or per-head scales).

Entry points: :func:`wrapped_copy` and :func:`reparameterize_for_` (the model a table is calibrated on),
:func:`calibration_plan` (what a table must hold for given candidates), :func:`quantize_ptq` (uniform precision in
one call) and :func:`quantize_table` (the same, with its table).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .calibration import CalibrationPlan, ParamTable, SearchSettings, calibrate_table, layer_plan
from .reparam import ReparamReport, apply_fold_, plan_folds
from .wrap import Pair, load_params_, quant_layers, uniform_pairs, wrap_model_

__all__ = [
    "PTQ_METHODS",
    "RANGE_SEARCHES",
    "PTQRecipe",
    "calibration_plan",
    "quantize_ptq",
    "quantize_table",
    "reparameterize_for_",
    "resolve_range_search",
    "wrapped_copy",
]

#: ``range_search`` values: ``minmax`` = the fast fits only, ``output`` = the output-aware search on top.
RANGE_SEARCHES = ("minmax", "output")


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


def _recipe(method: str) -> PTQRecipe:
    if method not in PTQ_METHODS:
        raise ValueError(f"unknown PTQ method {method!r}; choose one of {', '.join(PTQ_METHODS)}")
    return PTQ_METHODS[method]


def wrapped_copy(float_model: nn.Module, *, target: str = "sim", block_size: int = 32) -> nn.Module:
    """A wrapped copy of ``float_model`` in eval mode, every layer at float params (the input is not modified)."""
    return wrap_model_(copy.deepcopy(float_model).eval(), target=target, block_size=block_size)


@torch.no_grad()
def reparameterize_for_(model: nn.Module, calib_images: torch.Tensor, *, method: str,
                        reference: Mapping[str, Pair] | None = None, batch_size: int = 64,
                        seed: int = 0) -> list[ReparamReport]:
    """Fold the recipe's post-LayerNorm reparameterization into a wrapped ``model`` in place (none for ``minmax``),
    its kappa candidates scored at the ``reference`` pairs ``{layer: (wbits, abits)}`` (see ``quant.reparam``)."""
    recipe = _recipe(method)
    if recipe.reparam is None:
        return []
    device = next(model.parameters()).device
    folds = plan_folds(model, _batches(calib_images, batch_size, device), mode=recipe.reparam, reference=reference,
                       seed=seed)
    for fold in folds:
        apply_fold_(model, fold)
    return [fold.report for fold in folds]


def calibration_plan(model: nn.Module, *, method: str, pairs: Mapping[str, Sequence[Pair]],
                     reference: Mapping[str, Pair], range_search: str = "auto") -> CalibrationPlan:
    """The plan of a wrapped ``model``: each layer's candidate ``pairs`` and ``reference`` pair, the recipe's
    quantizer kinds, the resolved range search and the model's target."""
    recipe = _recipe(method)
    layers = quant_layers(model)
    target, block_size = layers[next(iter(layers))].target, layers[next(iter(layers))].block_size
    plans = {name: layer_plan(layer.component, layer.has_weight, layer.n_inputs, pairs.get(name, ()),
                              reference[name], target=target, softmax=recipe.softmax if target == "sim" else "uniform",
                              block_size=block_size)
             for name, layer in layers.items()}
    return CalibrationPlan(softmax=recipe.softmax, minmax=recipe.minmax,
                           search=resolve_range_search(method, range_search), target=target,
                           block_size=block_size, layers=plans)


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
    seed: int = 0,
) -> tuple[nn.Module, list[ReparamReport]]:
    """Return a uniformly quantized copy of ``float_model`` (the input model is not modified).

    calib_images: float [N,3,H,W], normalised for the model. wbits/abits: uniform bit-widths (16 = float);
    the patch embedding and head get ``head_bits`` (None = same as the rest). range_search: ``auto``,
    ``minmax`` (fast fits only) or ``output`` (output-aware search, see the module doc). target /
    block_size: deployment target and weight block size (``quant.wrap.wrap_model_``); in a target mode
    ``(wbits, abits)`` and ``head_bits`` must name forms the target executes. See :func:`quantize_table` for the
    table behind the model.
    """
    model, _table, _pairs, reports = quantize_table(
        float_model, calib_images, method=method, wbits=wbits, abits=abits, head_bits=head_bits,
        batch_size=batch_size, range_search=range_search, search_settings=search_settings, progress=progress,
        target=target, block_size=block_size, seed=seed)
    return model, reports


@torch.no_grad()
def quantize_table(float_model: nn.Module, calib_images: torch.Tensor, *, method: str = "dopq", wbits: int = 4,
                   abits: int = 4, head_bits: int | None = 8, batch_size: int = 64, range_search: str = "auto",
                   search_settings: SearchSettings | None = None,
                   progress: Callable[[str, float], None] | None = None, target: str = "sim", block_size: int = 32,
                   seed: int = 0, candidates: Mapping[str, Sequence[Pair]] | None = None,
                   ) -> tuple[nn.Module, ParamTable, dict[str, Pair], list[ReparamReport]]:
    """:func:`quantize_ptq` returning also the table and the uniform assignment: ``(model, table, {layer: pair},
    reparam reports)``; the model runs with ``table.select(pairs)``. The table holds the uniform pairs (the
    reference of the search) and ``candidates``: more pairs per layer name or per component name (``"qkv"``)."""
    _recipe(method)
    model = wrapped_copy(float_model, target=target, block_size=block_size)
    pairs = uniform_pairs(quant_layers(model), wbits, abits, head_bits)
    reports = reparameterize_for_(model, calib_images, method=method, reference=pairs, batch_size=batch_size,
                                  seed=seed)
    if progress:
        progress("reparameterize", 1.0)
    layers = quant_layers(model)
    wanted = {n: [p] for n, p in pairs.items()}
    for key, extra in (candidates or {}).items():
        names = [key] if key in layers else [n for n, layer in layers.items() if layer.component == key]
        if not names:
            raise KeyError(f"candidates name {key!r}, neither a layer nor a component of this model")
        for name in names:
            wanted[name] += [tuple(p) for p in extra]
    plan = calibration_plan(model, method=method, pairs=wanted, reference=pairs, range_search=range_search)
    table = calibrate_table(model, calib_images, plan, settings=search_settings, batch_size=batch_size, seed=seed,
                            progress=progress)
    load_params_(model, table.select(pairs))
    return model, table, pairs, reports
