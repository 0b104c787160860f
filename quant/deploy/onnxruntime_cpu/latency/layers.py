"""The shapes each quantization layer of a wrapped model sees at batch 1, grouped into unique latency problems.

``capture_layers(qmodel, (C, H, W))`` runs one zero image through the model with forward hooks (quantization off,
no calibration) and records, per layer, its ``LayerShape``: the operand shapes, the weight shape, the bias and
the convolution attributes. Layers with equal ``LayerShape.key`` (e.g. the twelve ``fc1`` of a DeiT) run the same
kernels, so the latency table measures each unique key once per form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ....layer_costs import probe_layers
from ....modules import QuantConv2d, QuantLayer, QuantLinear, QuantMatMul
from ....wrap import quant_layers
from ...form import layer_kind
from ..emit import conv_attrs

__all__ = ["LayerShape", "capture_layers", "unique_shapes"]


@dataclass(frozen=True)
class LayerShape:
    """What one call of a quantization layer computes, at batch 1.

    kind: ``linear`` / ``conv`` / ``matmul`` (``quant.deploy.form.layer_kind``); inputs: operand shapes (linear
    ``((*lead, K),)``, conv ``((1, C, H, W),)``, matmul ``(a, b)``); weight: torch weight shape (linear ``(N, K)``,
    conv ``(O, I/groups, kh, kw)``, matmul ``()``); has_bias; conv: ``(stride, padding, dilation, groups)`` as
    flat int tuples (``emit.ConvAttrs``; ``()`` for other kinds); calls: forward calls per image (their shapes
    must agree).
    """

    kind: str
    inputs: tuple[tuple[int, ...], ...]
    weight: tuple[int, ...] = ()
    has_bias: bool = False
    conv: tuple[tuple[int, ...], ...] = ()
    calls: int = 1

    @property
    def key(self) -> str:
        """Identifies the computation (not the layer's name or call count): equal keys run the same kernels."""
        shapes = "x".join(",".join(map(str, s)) for s in self.inputs)
        text = f"{self.kind}[{shapes}]"
        if self.weight:
            text += f"w[{','.join(map(str, self.weight))}]" + ("+b" if self.has_bias else "")
        if self.conv:
            text += "c[" + ";".join(",".join(map(str, part)) for part in self.conv) + "]"
        return text


def _shape_of(layer: QuantLayer, inputs: tuple) -> LayerShape:
    kind = layer_kind(layer.component)
    if isinstance(layer, QuantLinear):
        return LayerShape(kind, (tuple(inputs[0].shape),), (layer.out_features, layer.in_features),
                          layer.bias is not None)
    if isinstance(layer, QuantConv2d):
        return LayerShape(kind, (tuple(inputs[0].shape),), tuple(layer.weight.shape), layer.bias is not None,
                          conv_attrs(layer))
    if isinstance(layer, QuantMatMul):
        return LayerShape(kind, (tuple(inputs[0].shape), tuple(inputs[1].shape)))
    raise TypeError(f"unsupported quantization layer type {type(layer).__name__}")


@torch.no_grad()
def capture_layers(qmodel: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, LayerShape]:
    """``{layer name: LayerShape}`` of a wrapped model for one image of ``input_shape`` (C, H, W), forward order.

    The model's quantizer switches and train/eval mode are restored afterwards. Raises ``ValueError`` when a
    layer is called with different shapes within one forward pass or never called.
    """
    layers = quant_layers(qmodel)
    seen: dict[str, list[LayerShape]] = {name: [] for name in layers}

    def hook_for(name: str, layer: QuantLayer):
        def hook(_module, inputs, _output):
            seen[name].append(_shape_of(layer, inputs))
        return hook

    probe_layers(qmodel, tuple(input_shape), hook_for)
    shapes = {}
    for name, calls in seen.items():
        if not calls:
            raise ValueError(f"layer {name!r} was not called by a forward pass of a {tuple(input_shape)} image")
        if any(c != calls[0] for c in calls):
            raise ValueError(f"layer {name!r} is called with different shapes in one forward pass "
                             f"({[c.key for c in calls]}); the latency table needs one shape per layer")
        first = calls[0]
        shapes[name] = LayerShape(first.kind, first.inputs, first.weight, first.has_bias, first.conv, len(calls))
    return shapes


def unique_shapes(shapes: dict[str, LayerShape]) -> dict[str, LayerShape]:
    """``{key: LayerShape}`` of the distinct computations (first occurrence, ``calls`` reset to 1)."""
    out: dict[str, LayerShape] = {}
    for shape in shapes.values():
        if shape.key not in out:
            out[shape.key] = LayerShape(shape.kind, shape.inputs, shape.weight, shape.has_bias, shape.conv, 1)
    return out
