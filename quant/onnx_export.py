"""ONNX export of a wrapped, calibrated model with QuantizeLinear/DequantizeLinear (QDQ) nodes.

``export_onnx(qmodel, path, input_shape)`` writes a single-file ONNX model (opset 21, input ``images``
[batch, C, H, W] with a dynamic batch, output ``logits``) that onnxruntime runs on CPU. It goes through PyTorch's
``torch.export``-based exporter (``dynamo=True``, needs ``onnxscript``); QDQ nodes are emitted with
``torch.onnx.ops.symbolic``. How each quantizer is exported:

- Weights (active per-channel weight quantizer): the integer codes are an initializer feeding a per-channel
  ``DequantizeLinear`` (``axis``; scale float32 [out], zero point [out]). Linear weights are stored transposed
  ([in, out], ``axis=1``) so the layer is the canonical ``DequantizeLinear -> MatMul`` pattern; the patch
  embedding conv keeps [out, in, kh, kw] with ``axis=0``. Codes are ``uint8``, narrowed to ``uint4`` (opset 21
  packs two per byte) when every code and zero point of the layer fits in 4 bits, i.e. for weights of <= 4 bits.
  Weights kept at 16 bits are plain float initializers.
- Uniform per-tensor activation quantizers: ``Clip -> QuantizeLinear -> DequantizeLinear`` with a ``uint8``
  container. ONNX saturates to the container's range, so for fewer than 8 bits the ``Clip`` bounds
  ``((0 - z) s, (2^b - 1 - z) s)`` restrict the codes to ``b`` bits first; the container's zero point is chosen
  so the ``b``-bit code range fits it. The result equals the fake quantizer's ``(clamp(round(x/s) + z) - z) s``.
- Uniform quantizers with grouped scales from the output-aware range search (``position``: per token position,
  ``[N, 1]``; ``head``: per attention head, ``[H, 1, 1]``): exported simulated, as the float op graph
  ``Div -> Round -> Add -> Clip -> Sub -> Mul`` with the grouped scale/zero point initializers (broadcast), which
  is the fake quantizer's arithmetic; counted in ``mpq.float_simulated_activations``.
- Post-softmax log2 and TanQ quantizers, dynamic per-token uniform quantizers and the rare uniform quantizer
  whose zero point no uint8 container can hold (the codes ``[-z, 2^b - 1 - z]`` shifted by a zero point in
  ``[0, 255]`` must stay in ``[0, 255]``): exported as their equivalent float op graph (``Log``/``Pow`` for
  log2, ``Tan``/``Atan`` for TanQ), i.e. simulated in float, producing the same values up to float rounding.

onnxruntime then reproduces the PyTorch logits to float rounding (~1e-6), except for the rare input where a value
lands within an ulp of a rounding tie and the two runtimes' last-bit differences (summation order) pick
neighbouring codes; on the vit-digits test split that is a handful of images at W4A4 and top-1 is unchanged
(``bench/artifact.py``). The counts of each kind are recorded in the model's ``metadata_props`` (``mpq.qdq_activations``,
``mpq.float_simulated_activations``, ``mpq.int4_weights``...). The quantized model itself is not modified.

Deployment target mode (layers wrapped with ``target="onnxruntime-cpu"``, each with a ``form``, see
``quant.target.forms``): every layer is emitted in its form's exact node pattern, the one the per-layer latency
graphs measure:

- ``fp32``: ``MatMul(x, W[K, N])`` (+ ``Add(bias)``), ``Conv``, plain ``MatMul`` for the attention matmuls;
- ``int8``: ``QuantizeLinear -> DequantizeLinear`` (uint8, per tensor) on the input and ``DequantizeLinear`` of
  int8 symmetric per-channel weight codes (``code - 2^(b-1)``, zero points all 0), then ``MatMul``/``Conv``
  (+ ``Add(bias)``); for the attention matmuls the QDQ pair on both operands;
- ``w8``/``w4``/``w4a8``: ``com.microsoft.MatMulNBits`` (block-wise asymmetric weight codes packed as
  ``[N, n_blocks, block_size * bits / 8]``, 4-bit codes two per byte with the even index in the low nibble; scales
  ``[N * n_blocks]``; zero points packed the same way per row), ``accuracy_level`` 0, or 4 for ``w4a8`` where
  onnxruntime quantizes the input per row and K-block to int8 itself (the layer's ``dynamic_block`` quantizer
  simulates exactly that), then ``Add(bias)``.

The model's ``metadata_props`` then also carry ``mpq.target``, ``mpq.block_size`` and ``mpq.forms`` (JSON
``{form: count}``).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .modules import QuantConv2d, QuantLinear, QuantMatMul
from .quantizers import Log2Quantizer, TanQuantizer, UniformQuantizer
from .wrap import quant_layers

__all__ = ["MS_DOMAIN", "ONNX_OPSET", "OnnxExportError", "block_codes", "export_onnx", "pack_matmul_nbits"]

#: ONNX opset of exported models (21: per-axis DequantizeLinear with int4/uint4 inputs).
ONNX_OPSET = 21
#: Domain of onnxruntime's contrib ops (``MatMulNBits``), opset version 1.
MS_DOMAIN = "com.microsoft"
_CONTAINERS = ((torch.uint8, 0, 255),)  # int8 would add nothing: its range is uint8's, shifted


class OnnxExportError(RuntimeError):
    """The model cannot be exported as asked (a layer's quantizer state does not match its form, or the exported
    graph fails ``onnx.checker``); the message names the layer or the check."""


def block_codes(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                block_size: int) -> torch.Tensor:
    """Integer codes ``[N, n_blocks, block_size]`` (float, values in ``[0, 2^bits - 1]``) of a linear weight
    ``[N, K]`` quantized block-wise along K: K is zero-padded to ``n_blocks * block_size`` and each block uses its
    ``scale``/``zero_point`` (``[N, n_blocks, 1]``): ``clamp(round(w / scale) + zero_point, 0, 2^bits - 1)``."""
    rows, k = weight.shape
    n_blocks = -(-k // block_size)
    if tuple(scale.shape) != (rows, n_blocks, 1) or tuple(zero_point.shape) != (rows, n_blocks, 1):
        raise OnnxExportError(f"block-wise scale/zero point must have shape {(rows, n_blocks, 1)} for a weight "
                              f"{(rows, k)} with block_size {block_size}; got {tuple(scale.shape)} and "
                              f"{tuple(zero_point.shape)}")
    padded = F.pad(weight.detach().float(), (0, n_blocks * block_size - k)).reshape(rows, n_blocks, block_size)
    return torch.clamp(torch.round(padded / scale.float()) + zero_point.float(), 0, 2**bits - 1)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes along the last dim (zero-padded to even): two per byte, the even index in the low
    nibble."""
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def pack_matmul_nbits(codes: torch.Tensor, zero_point: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``MatMulNBits`` inputs ``B`` and ``zero_points`` from block codes.

    codes: integers in ``[0, 2^bits - 1]``, ``[N, n_blocks, block_size]``; zero_point: integers,
    ``[N, n_blocks]`` or ``[N, n_blocks, 1]``; bits: 4 or 8. Returns ``B`` uint8
    ``[N, n_blocks, block_size * bits / 8]`` and ``zero_points`` uint8, 1-D: ``N * n_blocks`` bytes (8 bits) or
    ``N * ceil(n_blocks / 2)`` (4 bits, each row packed on its own). 4-bit values go two per byte, the even index
    in the low nibble (onnxruntime's layout).
    """
    if bits not in (4, 8):
        raise OnnxExportError(f"MatMulNBits weights are exported at 4 or 8 bits, got {bits}")
    codes = codes.detach().to(torch.int64)
    zero = zero_point.detach().reshape(codes.shape[0], codes.shape[1]).to(torch.int64)
    qmax = 2**bits - 1
    for name, values in (("codes", codes), ("zero points", zero)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) > qmax):
            raise OnnxExportError(f"MatMulNBits {name} must lie in [0, {qmax}] for {bits} bits; "
                                  f"got [{int(values.min())}, {int(values.max())}]")
    if bits == 8:
        return codes.to(torch.uint8).contiguous(), zero.reshape(-1).to(torch.uint8).contiguous()
    return (_pack_nibbles(codes).to(torch.uint8).contiguous(),
            _pack_nibbles(zero).reshape(-1).to(torch.uint8).contiguous())


def _symbolic(op: str, inputs: tuple, dtype: torch.dtype, shape, attrs: dict | None = None) -> torch.Tensor:
    return torch.onnx.ops.symbolic(op, inputs, attrs or {}, dtype=dtype, shape=shape, version=ONNX_OPSET)


def _container(zero: int, qmax: int) -> tuple[torch.dtype, int] | None:
    """A QDQ container and zero point holding the codes ``round(x/s)`` in ``[-zero, qmax - zero]`` unsaturated."""
    for dtype, cmin, cmax in _CONTAINERS:
        low, high = max(cmin, cmin + zero), min(cmax, cmax - qmax + zero)
        if low <= high:
            return dtype, min(max(zero, low), high)
    return None


class _ActivationQDQ(nn.Module):
    """``Clip -> QuantizeLinear -> DequantizeLinear`` equal to a per-tensor uniform fake quantizer."""

    def __init__(self, quantizer: UniformQuantizer, dtype: torch.dtype, zero: int) -> None:
        super().__init__()
        scale = quantizer.scale.detach().float().reshape(())
        z = float(quantizer.zero_point)
        qmax = 2**quantizer.bits - 1
        self.low = float((torch.tensor(0.0, device=scale.device) - z) * scale)
        self.high = float((torch.tensor(float(qmax), device=scale.device) - z) * scale)
        self.clip = quantizer.bits < 8
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", torch.tensor(zero, dtype=dtype, device=scale.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip:
            x = torch.clamp(x, self.low, self.high)
        if torch.onnx.is_in_onnx_export():
            q = _symbolic("QuantizeLinear", (x, self.scale, self.zero_point), self.zero_point.dtype, x.shape)
            return _symbolic("DequantizeLinear", (q, self.scale, self.zero_point), x.dtype, x.shape)
        info = torch.iinfo(self.zero_point.dtype)
        zero = self.zero_point.float()
        return (torch.clamp(torch.round(x / self.scale) + zero, info.min, info.max) - zero) * self.scale


class _Log2(nn.Module):
    """Log2 fake quantizer with constant parameters (exported as a float op graph)."""

    def __init__(self, quantizer: Log2Quantizer) -> None:
        super().__init__()
        self.levels = 2**quantizer.bits - 1
        self.register_buffer("scale", quantizer.scale.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(-torch.log2(torch.clamp(x / self.scale, min=1e-30))), 0, self.levels)
        deq = self.scale * torch.pow(2.0, -q)
        return torch.where(q >= self.levels, torch.zeros_like(deq), deq)


class _TanQ(nn.Module):
    """TanQ fake quantizer with constant parameters (exported as a float op graph, see ``tanq_fake_quant``)."""

    def __init__(self, quantizer: TanQuantizer) -> None:
        super().__init__()
        self.a, self.c = float(quantizer.a), float(quantizer.c)
        self.t0, self.t1 = math.tan(-self.a * self.c), math.tan(self.a * (1 - self.c))
        self.step = 2.0 / (2**quantizer.bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (torch.tan(self.a * (torch.clamp(x, 0.0, 1.0) - self.c)) - self.t0) * (2.0 / (self.t1 - self.t0)) - 1.0
        yq = torch.clamp(torch.round((y + 1.0) / self.step) * self.step - 1.0, -1.0, 1.0)
        return self.c + torch.atan(self.t0 + (yq + 1.0) * ((self.t1 - self.t0) / 2.0)) / self.a


class _WeightDQ(nn.Module):
    """Per-channel ``DequantizeLinear`` of integer weight codes (the initializer; ``uint8``, or ``int8`` for
    symmetric weights)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int,
                 dtype: torch.dtype = torch.uint8) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("codes", codes.to(dtype).contiguous())
        self.register_buffer("scale", scale.detach().float().reshape(-1).clone())
        self.register_buffer("zero_point", zero.detach().reshape(-1).to(dtype).clone())

    def forward(self) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return _symbolic("DequantizeLinear", (self.codes, self.scale, self.zero_point), torch.float32,
                             self.codes.shape, {"axis": self.axis})
        view = [1] * self.codes.dim()
        view[self.axis] = -1
        return (self.codes.float() - self.zero_point.float().reshape(view)) * self.scale.reshape(view)


def _activation(quantizer, counts: dict[str, int]) -> nn.Module:
    if not quantizer.active:
        return nn.Identity()
    if isinstance(quantizer, UniformQuantizer) and quantizer.granularity == "tensor":
        zero = float(quantizer.zero_point)
        choice = _container(int(zero), 2**quantizer.bits - 1) if zero == round(zero) else None
        if choice is not None:
            counts["qdq_activations"] += 1
            return _ActivationQDQ(quantizer, *choice)
    counts["float_simulated_activations"] += 1
    if isinstance(quantizer, Log2Quantizer):
        return _Log2(quantizer)
    if isinstance(quantizer, TanQuantizer):
        return _TanQ(quantizer)
    return copy.deepcopy(quantizer)  # per-token uniform or an unrepresentable zero point: plain torch ops


def _weight(layer, counts: dict[str, int], transpose: bool) -> nn.Module | None:
    """Per-channel weight ``DequantizeLinear``; symmetric weights (zero point ``2^(b-1)``) as int8 codes
    ``code - 2^(b-1)`` with zero points 0."""
    quantizer = layer.weight_quantizer
    if not quantizer.active:
        return None
    with torch.no_grad():
        codes = quantizer.integer_weight(layer.weight.detach())
    zero, dtype = quantizer.zero_point, torch.uint8
    if getattr(quantizer, "symmetric", False):
        if quantizer.bits > 8:
            raise OnnxExportError(f"symmetric weights of {quantizer.bits} bits do not fit int8")
        half = 2 ** (quantizer.bits - 1)
        codes, zero, dtype = codes - half, zero - half, torch.int8
        counts["int8_weights"] = counts.get("int8_weights", 0) + 1
    counts["qdq_weights"] += 1
    if transpose:
        return _WeightDQ(codes.t(), quantizer.scale, zero, axis=1, dtype=dtype)
    return _WeightDQ(codes, quantizer.scale, zero, axis=0, dtype=dtype)


class _ExportLinear(nn.Module):
    def __init__(self, layer: QuantLinear, counts: dict[str, int]) -> None:
        super().__init__()
        self.input_quantizer = _activation(layer.input_quantizer, counts)
        self.weight_dq = _weight(layer, counts, transpose=True)
        self.weight = None if self.weight_dq is not None else nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x)
        if self.weight_dq is None:
            return F.linear(x, self.weight, self.bias)
        y = torch.matmul(x, self.weight_dq())
        return y if self.bias is None else y + self.bias


class _MatMulNBits(nn.Module):
    """``com.microsoft.MatMulNBits``: ``x [..., K] @ dequant(B)^T -> [..., N]`` with block-wise weight codes."""

    def __init__(self, layer: QuantLinear, accuracy_level: int) -> None:
        super().__init__()
        quantizer = layer.weight_quantizer
        self.block_size = int(quantizer.block_size)
        self.bits = int(quantizer.bits)
        self.n, self.k = layer.weight.shape
        self.accuracy_level = int(accuracy_level)
        with torch.no_grad():
            codes = block_codes(layer.weight, quantizer.scale, quantizer.zero_point, self.bits, self.block_size)
            packed, zero = pack_matmul_nbits(codes, quantizer.zero_point, self.bits)
        self.register_buffer("packed", packed)
        self.register_buffer("scales", quantizer.scale.detach().float().reshape(-1).clone())
        self.register_buffer("zero_points", zero)
        # the dequantized weight [K, N] for the eager forward (what MatMulNBits computes with accuracy_level 0)
        deq = (codes - quantizer.zero_point.detach().float()) * quantizer.scale.detach().float()
        self.register_buffer("dequantized", deq.reshape(self.n, -1)[:, : self.k].t().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            attrs = {"K": self.k, "N": self.n, "bits": self.bits, "block_size": self.block_size,
                     "accuracy_level": self.accuracy_level}
            return torch.onnx.ops.symbolic(f"{MS_DOMAIN}::MatMulNBits", (x, self.packed, self.scales,
                                           self.zero_points), attrs, dtype=x.dtype, shape=(*x.shape[:-1], self.n),
                                           version=1)
        return torch.matmul(x, self.dequantized)


class _TargetLinear(nn.Module):
    """A linear layer of a deployment target in its form's node pattern (module doc)."""

    def __init__(self, layer: QuantLinear, name: str, counts: dict[str, int]) -> None:
        super().__init__()
        form = layer.form
        self.input_quantizer: nn.Module = nn.Identity()
        self.weight_dq: nn.Module | None = None
        self.nbits: nn.Module | None = None
        self.weight = None
        if form.weights == "block":
            quantizer = layer.weight_quantizer
            if not quantizer.active or not getattr(quantizer, "block_size", None):
                raise OnnxExportError(f"layer {name!r} has form {form.name!r} but its weight quantizer is not "
                                      "block-wise; set the layer's bits again in target mode (set_bits_)")
            self.nbits = _MatMulNBits(layer, form.accuracy_level or 0)  # w4a8: onnxruntime quantizes the input
        elif form.weights == "channel":
            if not getattr(layer.weight_quantizer, "symmetric", False):
                raise OnnxExportError(f"layer {name!r} has form {form.name!r} but its weights are not symmetric")
            self.input_quantizer = _target_activation(layer.input_quantizer, counts, name)
            self.weight_dq = _weight(layer, counts, transpose=True)
        else:
            self.weight = nn.Parameter(layer.weight.detach().t().contiguous().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nbits is not None:
            y = self.nbits(x)
        else:
            weight = self.weight if self.weight_dq is None else self.weight_dq()
            y = torch.matmul(self.input_quantizer(x), weight)
        return y if self.bias is None else y + self.bias


def _target_activation(quantizer, counts: dict[str, int], name: str) -> nn.Module:
    """A static per-tensor activation quantizer of an ``int8`` form as a uint8 ``Q -> DQ`` pair; anything else
    (the sim helper guarantees it does not happen) raises ``OnnxExportError``."""
    if not quantizer.active:
        raise OnnxExportError(f"layer {name!r}: an int8 form needs an active 8-bit activation quantizer")
    before = counts["float_simulated_activations"]
    module = _activation(quantizer, counts)
    if counts["float_simulated_activations"] != before or not isinstance(module, _ActivationQDQ):
        what = {"granularity": getattr(quantizer, "granularity", None), "bits": quantizer.bits}
        zero = getattr(quantizer, "zero_point", None)
        if zero is not None and zero.numel() == 1:
            what["zero_point"] = float(zero)
        raise OnnxExportError(f"layer {name!r}: its {type(quantizer).__name__} {what} is not a uint8 per-tensor "
                              "quantizer with a zero point in [0, 255]; onnxruntime cannot run this int8 form")
    return module


class _ExportConv(nn.Module):
    def __init__(self, layer: QuantConv2d, counts: dict[str, int], activation=None) -> None:
        super().__init__()
        self.input_quantizer = (activation or _activation)(layer.input_quantizer, counts)
        self.weight_dq = _weight(layer, counts, transpose=False)
        self.weight = None if self.weight_dq is not None else nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, \
            layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight_dq is None else self.weight_dq()
        return F.conv2d(self.input_quantizer(x), weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class _ExportMatMul(nn.Module):
    def __init__(self, layer: QuantMatMul, counts: dict[str, int], activation=None) -> None:
        super().__init__()
        self.quantizer_a = (activation or _activation)(layer.quantizer_a, counts)
        self.quantizer_b = (activation or _activation)(layer.quantizer_b, counts)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.quantizer_a(a) @ self.quantizer_b(b)


def _float_form(layer, name: str) -> None:
    """An ``fp32`` form runs no quantizer: check that none is active (else onnxruntime would differ)."""
    active = [q for q in layer.activation_quantizers() if q.active]
    if (layer.has_weight and layer.weight_quantizer.active) or active:
        raise OnnxExportError(f"layer {name!r} has form 'fp32' but quantizes its weights or inputs "
                              f"(w{layer.wbits}a{layer.abits}); set its bits again in target mode (set_bits_)")


def _target_layer(layer, name: str, counts: dict[str, int]) -> nn.Module:
    """A deployment-target layer in its form's node pattern (see the module doc)."""
    form = layer.form
    if form.weights == "float" and form.activations == "float":
        _float_form(layer, name)
    strict = functools.partial(_target_activation, name=name)
    if isinstance(layer, QuantMatMul):
        return _ExportMatMul(layer, counts, activation=_activation if form.activations == "float" else strict)
    if isinstance(layer, QuantLinear):
        return _TargetLinear(layer, name, counts)
    if form.weights == "channel" and not getattr(layer.weight_quantizer, "symmetric", False):
        raise OnnxExportError(f"layer {name!r} has form {form.name!r} but its weights are not symmetric")
    return _ExportConv(layer, counts, activation=_activation if form.activations == "float" else strict)


def _exportable(qmodel: nn.Module) -> tuple[nn.Module, dict[str, int], dict]:
    """A copy of ``qmodel`` whose quantization layers are replaced by their ONNX-exportable equivalents; the
    counts of each export kind, and (target mode) ``{"target", "block_size", "forms": {form: count}}``."""
    model = copy.deepcopy(qmodel).cpu().float().eval()
    counts = {"qdq_weights": 0, "qdq_activations": 0, "float_simulated_activations": 0}
    target: dict = {}
    for name, layer in quant_layers(model).items():
        form = getattr(layer, "form", None)
        if form is not None:
            replacement: nn.Module = _target_layer(layer, name, counts)
            target.setdefault("target", getattr(layer, "target", ""))
            target.setdefault("block_size", getattr(layer, "block_size", None))
            forms = target.setdefault("forms", {})
            forms[form.name] = forms.get(form.name, 0) + 1
        elif isinstance(layer, QuantMatMul):
            replacement = _ExportMatMul(layer, counts)
        elif isinstance(layer, QuantLinear):
            replacement = _ExportLinear(layer, counts)
        elif isinstance(layer, QuantConv2d):
            replacement = _ExportConv(layer, counts)
        else:  # pragma: no cover - every QuantLayer kind is handled above
            raise TypeError(f"cannot export quantization layer {name!r} of type {type(layer).__name__}")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    return model, counts, target


def _narrow_int4(model) -> int:
    """Turn uint8 weight initializers (and their zero points) whose values all fit in 4 bits into uint4."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    narrowed = 0
    changed: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        codes, zero = inits.get(node.input[0]), inits.get(node.input[2])
        if codes is None or zero is None or codes.data_type != onnx.TensorProto.UINT8 \
                or zero.data_type != onnx.TensorProto.UINT8 or users[codes.name] != 1 or users[zero.name] != 1:
            continue
        arrays = [numpy_helper.to_array(codes), numpy_helper.to_array(zero)]
        if any(int(a.max(initial=0)) > 15 for a in arrays):
            continue
        for init, array in zip((codes, zero), arrays, strict=True):
            flat = array.astype(np.uint8).reshape(-1)
            flat = np.concatenate([flat, np.zeros(flat.size % 2, np.uint8)])
            packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)  # first element in the low nibble
            new = onnx.helper.make_tensor(init.name, onnx.TensorProto.UINT4, array.shape, packed.tobytes(), raw=True)
            init.CopyFrom(new)
            changed.add(init.name)
        narrowed += 1
    stale = [info for info in model.graph.value_info if info.name in changed]
    for info in stale:  # the exporter's recorded uint8 types of these values
        model.graph.value_info.remove(info)
    return narrowed


def export_onnx(qmodel: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """Export ``qmodel`` (wrapped and calibrated) to ``path`` as a QDQ ONNX model; returns the path.

    input_shape: ``(C, H, W)`` of one image; the batch dimension is dynamic. A model wrapped for a deployment
    target (layers with a ``form``) is exported in each layer's form (module doc). Raises ``OnnxExportError`` (a
    ``RuntimeError``) when the exported model fails ``onnx.checker`` or a layer's quantizers do not match its
    form, and ``ImportError`` naming the packages when ``onnx`` or ``onnxscript`` (which PyTorch's exporter
    needs) is not installed.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 - imported by torch.onnx.export(dynamo=True); fail early and clearly
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages ({exc}); "
                          "pip install onnx onnxscript onnxruntime") from exc

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model, counts, target = _exportable(qmodel)
    example = torch.zeros((2, *input_shape), device="cpu")  # the exportable copy lives on the CPU
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=ONNX_OPSET, input_names=["images"],
            output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's per-node stack traces and module paths: 60% of the file
        del node.metadata_props[:]
        node.doc_string = ""
    counts["int4_weights"] = _narrow_int4(proto)
    counts["uint8_weights"] = counts["qdq_weights"] - counts["int4_weights"] - counts.get("int8_weights", 0)
    meta = {f"mpq.{key}": str(value) for key, value in counts.items()}
    if target:
        meta.update({"mpq.target": str(target["target"]), "mpq.block_size": str(target["block_size"]),
                     "mpq.forms": json.dumps(target["forms"], sort_keys=True)})
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"exported ONNX model fails onnx.checker: {exc}") from exc
    onnx.save_model(proto, str(path))
    return path
