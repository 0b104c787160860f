"""Per-layer cost facts of a wrapped model (parameters, output channels, MACs, activation elements) and the
budget costs (size, BOPs, average bits) of a layer at given bits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .modules import QuantConv2d, QuantLayer, QuantLinear
from .quantizers import FLOAT_BITS
from .target import form_weight_bytes
from .wrap import load_params_, quant_layers

__all__ = ["LayerProfile", "bits_summary", "cost_totals", "layer_costs", "probe_layers", "profile_layers"]


@dataclass(frozen=True)
class LayerProfile:
    """Costs of one quantization layer for one image.

    params: weight elements (0 for matmuls); out_channels: weight rows (per-channel scale count);
    macs: multiply-accumulates per image; act_elements: quantized input elements per image.
    """

    name: str
    component: str
    params: int
    out_channels: int
    macs: int
    act_elements: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def profile_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, LayerProfile]:
    """Run one image of ``input_shape`` (C,H,W) through ``model`` and count each layer's costs."""
    layers = quant_layers(model)
    counts: dict[str, tuple[int, int]] = {}

    def hook_for(name: str, layer: QuantLayer):
        def hook(_module, inputs, output):
            if isinstance(layer, QuantLinear):
                x = inputs[0]
                macs = x.numel() // x.shape[-1] * layer.in_features * layer.out_features
                acts = x.numel()
            elif isinstance(layer, QuantConv2d):
                k = layer.weight[0].numel()
                macs = output.numel() * k
                acts = inputs[0].numel()
            else:
                a, b = inputs
                macs = a.numel() * b.shape[-1]
                acts = a.numel() + b.numel()
            prev = counts.get(name, (0, 0))
            counts[name] = (prev[0] + macs, prev[1] + acts)

        return hook

    probe_layers(model, input_shape, hook_for)
    profiles = {}
    for name, layer in layers.items():
        macs, acts = counts.get(name, (0, 0))
        params = layer.weight.numel() if layer.has_weight else 0
        out_channels = layer.weight.shape[0] if layer.has_weight else 0
        profiles[name] = LayerProfile(name, layer.component, params, out_channels, macs, acts)
    return profiles


@torch.no_grad()
def probe_layers(model: nn.Module, input_shape: tuple[int, ...], hook_for: Callable[[str, QuantLayer], Callable]) -> None:
    """One forward pass of a zero image of ``input_shape`` (C, H, W; batch 1) through a wrapped ``model`` with every
    layer at float params (shapes only, no fake quantization) and ``hook_for(name, layer)`` installed as each
    quantization layer's forward hook; the layers' params and train/eval mode are restored afterwards."""
    layers = quant_layers(model)
    handles = [layer.register_forward_hook(hook_for(name, layer)) for name, layer in layers.items()]
    was_training = model.training
    saved = {name: layer.params for name, layer in layers.items()}
    model.eval()
    try:
        load_params_(model, {})
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
        load_params_(model, saved)
        model.train(was_training)


def layer_costs(profile: LayerProfile, wbits: int, abits: int, totals: dict[str, float], form=None,
                block_size: int = 32) -> dict[str, float]:
    """Budget costs of one layer at ``(wbits, abits)``; ``totals`` has ``params`` and ``act_elements``.

    size: packed weight bytes incl. per-channel fp16 scale and zero point (0 for matmuls, nothing at 16 bits); with
    a runtime ``form`` (``quant.target.Form``) the bytes the deployed graph stores (``form_weight_bytes``: fp32
    4 bytes per weight, int8 scales per channel, MatMulNBits scales and zero points per block of ``block_size``);
    bops: MACs * wbits * abits per image (matmuls: MACs * abits * abits, both operands are activations);
    wbits / abits: this layer's share of the parameter- / element-weighted average bits.
    """
    if profile.params:
        overhead = 0 if wbits >= FLOAT_BITS else profile.out_channels * 2 * 16
        size = (profile.params * wbits + overhead) / 8
        bops = profile.macs * wbits * abits
    else:
        size, bops = 0.0, profile.macs * abits * abits
    if form is not None:
        size = form_weight_bytes(form, profile.params, profile.out_channels, block_size)
    return {
        "size": float(size),
        "bops": float(bops),
        "wbits": profile.params * wbits / max(totals["params"], 1),
        "abits": profile.act_elements * abits / max(totals["act_elements"], 1),
    }


def cost_totals(profiles: dict[str, LayerProfile]) -> dict[str, float]:
    """Totals that normalise the average-bits budgets: parameters and activation elements of all layers."""
    return {"params": sum(p.params for p in profiles.values()),
            "act_elements": sum(p.act_elements for p in profiles.values())}


def bits_summary(model: nn.Module, profiles: dict[str, LayerProfile]) -> dict[str, float]:
    """The model's current usage of every budget: ``weights_avg`` (parameter-weighted average weight bits),
    ``activations_avg`` (element-weighted), ``bops`` per image and ``weight_bytes`` (see ``layer_costs``)."""
    totals = cost_totals(profiles)
    usage = {"size": 0.0, "bops": 0.0, "wbits": 0.0, "abits": 0.0}
    for name, layer in quant_layers(model).items():
        wbits = layer.wbits if layer.has_weight else FLOAT_BITS
        form = layer.form
        for key, value in layer_costs(profiles[name], wbits, layer.abits, totals, form, layer.block_size).items():
            usage[key] += value
    return {"weights_avg": usage["wbits"], "activations_avg": usage["abits"], "bops": usage["bops"],
            "weight_bytes": usage["size"]}
