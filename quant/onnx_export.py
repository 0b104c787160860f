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
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .modules import QuantConv2d, QuantLinear, QuantMatMul
from .quantizers import Log2Quantizer, TanQuantizer, UniformQuantizer
from .wrap import quant_layers

__all__ = ["ONNX_OPSET", "export_onnx"]

#: ONNX opset of exported models (21: per-axis DequantizeLinear with int4/uint4 inputs).
ONNX_OPSET = 21
_CONTAINERS = ((torch.uint8, 0, 255),)  # int8 would add nothing: its range is uint8's, shifted


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
    """Per-channel ``DequantizeLinear`` of integer weight codes (the initializer)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("codes", codes.to(torch.uint8).contiguous())
        self.register_buffer("scale", scale.detach().float().reshape(-1).clone())
        self.register_buffer("zero_point", zero.detach().reshape(-1).to(torch.uint8).clone())

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
    quantizer = layer.weight_quantizer
    if not quantizer.active:
        return None
    with torch.no_grad():
        codes = quantizer.integer_weight(layer.weight.detach())
    counts["qdq_weights"] += 1
    if transpose:
        return _WeightDQ(codes.t(), quantizer.scale, quantizer.zero_point, axis=1)
    return _WeightDQ(codes, quantizer.scale, quantizer.zero_point, axis=0)


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


class _ExportConv(nn.Module):
    def __init__(self, layer: QuantConv2d, counts: dict[str, int]) -> None:
        super().__init__()
        self.input_quantizer = _activation(layer.input_quantizer, counts)
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
    def __init__(self, layer: QuantMatMul, counts: dict[str, int]) -> None:
        super().__init__()
        self.quantizer_a = _activation(layer.quantizer_a, counts)
        self.quantizer_b = _activation(layer.quantizer_b, counts)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.quantizer_a(a) @ self.quantizer_b(b)


def _exportable(qmodel: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A copy of ``qmodel`` whose quantization layers are replaced by their ONNX-exportable equivalents."""
    model = copy.deepcopy(qmodel).cpu().float().eval()
    counts = {"qdq_weights": 0, "qdq_activations": 0, "float_simulated_activations": 0}
    for name, layer in quant_layers(model).items():
        if isinstance(layer, QuantMatMul):
            replacement: nn.Module = _ExportMatMul(layer, counts)
        elif isinstance(layer, QuantLinear):
            replacement = _ExportLinear(layer, counts)
        elif isinstance(layer, QuantConv2d):
            replacement = _ExportConv(layer, counts)
        else:  # pragma: no cover - every QuantLayer kind is handled above
            raise TypeError(f"cannot export quantization layer {name!r} of type {type(layer).__name__}")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    return model, counts


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

    input_shape: ``(C, H, W)`` of one image; the batch dimension is dynamic. Raises ``RuntimeError`` when the
    exported model fails ``onnx.checker`` and ``ImportError`` naming the packages when ``onnx`` or
    ``onnxscript`` (which PyTorch's exporter needs) is not installed.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 - imported by torch.onnx.export(dynamo=True); fail early and clearly
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages ({exc}); "
                          "pip install onnx onnxscript onnxruntime") from exc

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model, counts = _exportable(qmodel)
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
    counts["uint8_weights"] = counts["qdq_weights"] - counts["int4_weights"]
    for key, value in counts.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"mpq.{key}", str(value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"exported ONNX model fails onnx.checker: {exc}") from exc
    onnx.save_model(proto, str(path))
    return path
