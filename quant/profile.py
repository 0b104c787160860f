"""Per-layer cost facts of a wrapped model: parameters, output channels, MACs and activation elements."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .modules import QuantConv2d, QuantLayer, QuantLinear
from .wrap import quant_layers

__all__ = ["LayerProfile", "bits_summary", "profile_layers"]


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

    handles = [layer.register_forward_hook(hook_for(name, layer)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    profiles = {}
    for name, layer in layers.items():
        macs, acts = counts.get(name, (0, 0))
        params = layer.weight.numel() if layer.has_weight else 0
        out_channels = layer.weight.shape[0] if layer.has_weight else 0
        profiles[name] = LayerProfile(name, layer.component, params, out_channels, macs, acts)
    return profiles


def bits_summary(model: nn.Module, profiles: dict[str, LayerProfile]) -> dict[str, float]:
    """Average bits: ``weights_avg`` weighted by parameters, ``activations_avg`` by activation elements;
    ``bops`` (MACs * wbits * abits, per image) and ``weight_bytes`` (packed weights + fp16 scale/zero point)."""
    layers = quant_layers(model)
    wsum = psum = asum = esum = bops = wbytes = 0.0
    for name, layer in layers.items():
        prof = profiles[name]
        wbits, abits = layer.wbits, layer.abits
        if layer.has_weight:
            wsum += wbits * prof.params
            psum += prof.params
            overhead = 0 if wbits >= 16 else prof.out_channels * 2 * 16
            wbytes += (prof.params * wbits + overhead) / 8
        asum += abits * prof.act_elements
        esum += prof.act_elements
        bops += prof.macs * (wbits if layer.has_weight else abits) * abits
    return {
        "weights_avg": wsum / max(psum, 1),
        "activations_avg": asum / max(esum, 1),
        "bops": bops,
        "weight_bytes": wbytes,
    }


