"""Calibrate a job's whole parameter table: every params entry each layer needs, fitted and searched.

``calibrate_table(model, images, plan)``: one float pass records every operand (``capture``); then, layer by layer,

1. fast fits at every width the plan names: weights by the per-channel (per-block) percentile x shrink MSE grid,
   uniform inputs by the quantile MSE grid of the value sample (plain min/max for the ``minmax`` recipe), log2 at the
   sample maximum, TanQ by its ``(a, c)`` grid on ``maps @ values``;
2. with ``plan.search == "output"``, the output-aware search (``quant.calibration.search``) refines every uniform
   input and every non-block weight at every width, on the one captured input set of the layer;
3. the table entries: each candidate pair composed of the entries of its weight and input keys.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..modules import QuantMatMul
from ..quantizers import DynamicParams, LayerParams, fit_log2, fit_tanq, fit_uniform, fit_weight
from ..wrap import quant_layers
from .capture import Capture, capture_inputs
from .plan import ActKey, CalibrationPlan, LayerPlan
from .search import SearchSettings, search_linear, search_matmul
from .table import ParamTable

__all__ = ["calibrate_table", "fast_fit_acts"]


def fast_fit_acts(kind: str, keys, sample: torch.Tensor, product: tuple | None, *, minmax: bool,
                  include_zero: bool, block_size: int) -> dict[ActKey, object]:
    """Fast fits of one operand at every key: ``kind`` ``uniform``/``log2``/``tanq``; ``product``: (maps, values)
    for TanQ; dynamic keys get int8 block params (nothing to fit)."""
    out = {}
    for key in keys:
        if key.mode == "dynamic":
            out[key] = DynamicParams(8, "block", block_size)
        elif kind == "tanq":
            maps, values = product if product is not None else (None, None)
            out[key] = fit_tanq(sample, key.bits, maps, values)
        elif kind == "log2":
            out[key] = fit_log2(sample, key.bits)
        else:
            out[key] = fit_uniform(sample, key.bits, minmax=minmax, include_zero=include_zero)
    return out


def _layer_entries(name: str, layer, plan: CalibrationPlan, lp: LayerPlan, capture: Capture,
                   settings: SearchSettings) -> dict[tuple[int, int], LayerParams]:
    include_zero = plan.target != "sim"
    weights = {key: fit_weight(layer.weight, key.bits, layout=key.layout, block_size=key.block_size,
                               minmax=plan.minmax) for key in lp.weight_keys}
    acts = []
    for operand, kind in enumerate(lp.operand_kinds):
        keys = lp.act_keys(operand)
        if not keys:
            acts.append({})
            continue
        sample = capture.stats[name][operand].sample()
        acts.append(fast_fit_acts(kind, keys, sample, capture.products.get(name), minmax=plan.minmax,
                                  include_zero=include_zero, block_size=plan.block_size))
    inputs = capture.layer_inputs(name) if plan.search == "output" else []
    if inputs:
        ref_w, ref_acts = lp.reference_keys
        if isinstance(layer, QuantMatMul):
            acts = search_matmul(inputs[0], inputs[1], acts, ref_acts[0], settings, plan.grouped, include_zero,
                                 capture.stats[name])
        elif layer.has_weight:
            weights, acts[0] = search_linear(layer, inputs[0], weights, acts[0], (ref_w, ref_acts[0]), settings,
                                             plan.grouped, include_zero, capture.stats[name][0])
    capture.release(name)
    return {pair: LayerParams(weights[wk] if wk is not None else None,
                              tuple(acts[i][ak] if ak is not None else None for i, ak in enumerate(aks)))
            for pair, (wk, aks) in lp.compose.items()}


@torch.no_grad()
def _bytes_per_image(model: nn.Module, layers, image: torch.Tensor) -> int:
    capture = capture_inputs(model, layers, image[:1], batch_size=1, keep_images=1)
    return sum(t.numel() * t.element_size() for name in layers for t in capture.layer_inputs(name))


@torch.no_grad()
def calibrate_table(
    model: nn.Module,
    images: torch.Tensor,
    plan: CalibrationPlan,
    *,
    settings: SearchSettings | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[str, float], None] | None = None,
) -> ParamTable:
    """The parameter table of a wrapped model (float-weight model, reparameterized if the recipe says so) for
    ``plan`` (module doc; the table covers the layers the plan names). images: float calibration images
    [N, 3, H, W], normalised for the model; the search uses
    the first ``settings.images`` (fewer if their captured inputs would exceed ``settings.capture_bytes``).
    progress(step, fraction): ``capture`` then ``fit``. The model's layers keep the params they had."""
    settings = settings or SearchSettings()
    all_layers = quant_layers(model)
    unknown = [name for name in plan.layers if name not in all_layers]
    if unknown:
        raise ValueError(f"the calibration plan names layers the model does not have: {unknown[:4]}")
    layers = {name: layer for name, layer in all_layers.items() if name in plan.layers}
    keep = 0
    if plan.search == "output":
        subset = images[: settings.images]
        per_image = max(_bytes_per_image(model, layers, subset), 1)
        keep = max(4, min(len(subset), settings.capture_bytes // per_image))
    capture = capture_inputs(model, layers, images, batch_size=batch_size, keep_images=keep, seed=seed,
                             progress=(lambda f: progress("capture", f)) if progress else None)
    entries = {}
    for index, (name, layer) in enumerate(layers.items()):
        entries[name] = _layer_entries(name, layer, plan, plan.layers[name], capture, settings)
        if progress is not None:
            progress("fit", (index + 1) / len(layers))
    return ParamTable(entries)
