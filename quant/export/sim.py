"""Export modules of ``sim`` layers: what each quantization layer of a simulated model becomes in the ONNX graph.

The layer's float op (``MatMul`` (+ ``Add``) for linears, with the weight stored transposed ``[K, N]``; ``Conv``;
``a @ b``) is traced by ``torch.export``; its quantized parts are:

- static per-tensor input grids: a placeholder (``{layer}.inputs.{i}``) replaced by ``quant.export.qdq``'s
  ``[Clip ->] QuantizeLinear -> DequantizeLinear``;
- quantized weights: a placeholder (``{layer}.weight``) replaced by ``DequantizeLinear`` of the integer codes
  (``[K, N]`` with ``axis=1`` for linears, ``[O, I, kh, kw]`` with ``axis=0`` for the patch embedding);
- everything else is *simulated in float*, traced as the fake quantizer's own torch ops: grouped scales
  (``position``: ``[N, 1]``, ``head``: ``[H, 1, 1]``) as ``Div -> Round -> Add -> Clip -> Sub -> Mul`` with the
  scale/zero point initializers; post-softmax log2 (``Log``/``Pow``) and TanQ (``Tan``/``Atan``); dynamic per-token
  grids; a per-tensor grid whose zero point no ``uint8`` container holds. Counted in ``float_simulated_activations``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import QuantConv2d, QuantLinear, QuantMatMul
from ..quantizers import AffineParams, Log2Params, TanQParams, fake_quant, fake_quant_uniform
from .placeholder import Placeholders
from .qdq import dequantize_weight, grid_of, quantize_dequantize, weight_codes_of

__all__ = ["activation_module", "sim_layer"]


class _Log2(nn.Module):
    """Log2 fake quantizer with constant parameters (exported as a float op graph)."""

    def __init__(self, params: Log2Params) -> None:
        super().__init__()
        self.levels = 2**params.bits - 1
        self.register_buffer("scale", params.scale.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(-torch.log2(torch.clamp(x / self.scale, min=1e-30))), 0, self.levels)
        deq = self.scale * torch.pow(2.0, -q)
        return torch.where(q >= self.levels, torch.zeros_like(deq), deq)


class _TanQ(nn.Module):
    """TanQ fake quantizer with constant parameters (exported as a float op graph, see ``tanq_fake_quant``)."""

    def __init__(self, params: TanQParams) -> None:
        super().__init__()
        self.slope, self.centre = float(params.a), float(params.c)
        self.t0, self.t1 = math.tan(-self.slope * self.centre), math.tan(self.slope * (1 - self.centre))
        self.step = 2.0 / (2**params.bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (torch.tan(self.slope * (torch.clamp(x, 0.0, 1.0) - self.centre)) - self.t0) \
            * (2.0 / (self.t1 - self.t0)) - 1.0
        yq = torch.clamp(torch.round((y + 1.0) / self.step) * self.step - 1.0, -1.0, 1.0)
        return self.centre + torch.atan(self.t0 + (yq + 1.0) * ((self.t1 - self.t0) / 2.0)) / self.slope


class _Simulated(nn.Module):
    """Any other activation params (grouped or dynamic uniform) as their plain torch ops (``fake_quant``); a grouped
    grid's scale and zero point are buffers (initializers of the graph)."""

    def __init__(self, params) -> None:
        super().__init__()
        self.params = params
        if isinstance(params, AffineParams):
            self.register_buffer("scale", params.scale.detach().float().clone())
            self.register_buffer("zero_point", params.zero_point.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.params, AffineParams):
            return fake_quant_uniform(x, self.scale, self.zero_point, self.params.bits)
        return fake_quant(x, self.params)


def activation_module(params, key: str, placeholders: Placeholders, counts: dict[str, int]) -> nn.Module:
    """The export module of an input's params: identity (None), a QDQ placeholder (a per-tensor grid with a
    container) or the float simulation (counted in ``counts["float_simulated_activations"]``)."""
    if params is None:
        return nn.Identity()
    grid = grid_of(params)
    if grid is not None:
        emit = functools.partial(_emit_qdq, grid=grid)
        return placeholders.add(key, emit, lambda x: x.shape)
    counts["float_simulated_activations"] += 1
    if isinstance(params, Log2Params):
        return _Log2(params)
    if isinstance(params, TanQParams):
        return _TanQ(params)
    return _Simulated(params)  # grouped/per-token uniform or an unrepresentable zero point: plain torch ops


def _emit_qdq(sink, inputs: list[str], output: str, *, grid) -> None:
    quantize_dequantize(sink, inputs[0], grid, output=output)


def _emit_weight(sink, inputs: list[str], output: str, *, codes) -> None:
    dequantize_weight(sink, codes, "", output=output)


def _weight_module(layer, name: str, placeholders: Placeholders, transpose: bool) -> nn.Module | None:
    """A placeholder of the layer's dequantized weight (``[K, N]`` when ``transpose``), None for a float weight."""
    params = layer.params.weight
    if params is None:
        return None
    codes = weight_codes_of(layer.weight, params)
    codes = codes.transposed() if transpose else codes
    shape = tuple(codes.codes.shape)
    return placeholders.add(f"{name}.weight", functools.partial(_emit_weight, codes=codes), lambda: shape)


class _ExportLinear(nn.Module):
    def __init__(self, layer: QuantLinear, name: str, placeholders: Placeholders, counts: dict[str, int]) -> None:
        super().__init__()
        self.input_qdq = activation_module(layer.params.inputs[0], f"{name}.inputs.0", placeholders, counts)
        self.weight_dq = _weight_module(layer, name, placeholders, transpose=True)
        self.weight = None if self.weight_dq is not None else nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_qdq(x)
        if self.weight_dq is None:
            return F.linear(x, self.weight, self.bias)
        y = torch.matmul(x, self.weight_dq())
        return y if self.bias is None else y + self.bias


class _ExportConv(nn.Module):
    def __init__(self, layer: QuantConv2d, name: str, placeholders: Placeholders, counts: dict[str, int]) -> None:
        super().__init__()
        self.input_qdq = activation_module(layer.params.inputs[0], f"{name}.inputs.0", placeholders, counts)
        self.weight_dq = _weight_module(layer, name, placeholders, transpose=False)
        self.weight = None if self.weight_dq is not None else nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, \
            layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight_dq is None else self.weight_dq()
        return F.conv2d(self.input_qdq(x), weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class _ExportMatMul(nn.Module):
    def __init__(self, layer: QuantMatMul, name: str, placeholders: Placeholders, counts: dict[str, int]) -> None:
        super().__init__()
        self.a_qdq = activation_module(layer.params.inputs[0], f"{name}.inputs.0", placeholders, counts)
        self.b_qdq = activation_module(layer.params.inputs[1], f"{name}.inputs.1", placeholders, counts)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_qdq(a) @ self.b_qdq(b)


def sim_layer(layer, name: str, placeholders: Placeholders, counts: dict[str, int]) -> nn.Module:
    """The export module of a ``sim`` quantization layer (module doc)."""
    if isinstance(layer, QuantMatMul):
        return _ExportMatMul(layer, name, placeholders, counts)
    if isinstance(layer, QuantLinear):
        return _ExportLinear(layer, name, placeholders, counts)
    if isinstance(layer, QuantConv2d):
        return _ExportConv(layer, name, placeholders, counts)
    raise TypeError(f"cannot export quantization layer {name!r} of type {type(layer).__name__}")
