"""One emitter per form: the only code that writes an ``onnxruntime-cpu`` layer's ONNX nodes.

``emit_layer(sink, form, arrays, inputs, output)`` appends the nodes of one layer in ``form``, reading the values
named ``inputs`` (``[x]``, or ``[a, b]`` for the attention matmuls) and writing ``output``. The export calls it with
a layer's real codes and params (``export.layer_arrays``), the latency graphs with random codes of the layer's
shapes (``latency.graphs.random_arrays``), so the graph measured is the graph exported. Node patterns (opset 21,
``com.microsoft`` 1):

- ``fp32``: linear ``MatMul(x, W [K, N])`` (+ ``Add(bias)``); conv ``Conv(x, W, b)``; matmul ``MatMul(a, b)``;
- ``int8``: linear ``QuantizeLinear -> DequantizeLinear`` (uint8, per tensor) on ``x``, ``DequantizeLinear(Wq int8
  [K, N], s [N], z int8 [N] = 0, axis=1)``, ``MatMul`` (+ ``Add``) — the pattern onnxruntime fuses to
  ``MatMulIntegerToFloat`` for ``[B, T, K]`` inputs; conv the same with ``DequantizeLinear(Wq int8 [O, I, kh, kw],
  axis=0)`` and ``Conv``; matmul the QDQ pair on ``a`` and on ``b``, then ``MatMul`` (``quant.export.qdq`` writes
  every ``QuantizeLinear``/``DequantizeLinear``);
- ``w8`` / ``w4`` / ``w4a8``: ``com.microsoft.MatMulNBits(x, B uint8 [N, n_blocks, block_size * bits / 8], scales
  float32 [N * n_blocks], zero_points uint8)`` with ``K``, ``N``, ``bits``, ``block_size`` and the form's
  ``accuracy_level`` (0, 0, 4: onnxruntime quantizes the input to int8 per row and K-block itself) (+ ``Add``);
  4-bit codes and zero points two per byte, low nibble first, each row's zero points padded to whole bytes
  (``pack_matmul_nbits``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...export.graph import OnnxExportError, Sink
from ...export.qdq import Grid, WeightCodes, dequantize_weight, quantize_dequantize
from ...packing import pack_nibbles
from ..form import Form

__all__ = [
    "EMITTERS",
    "MS_DOMAIN",
    "BlockWeight",
    "ConvAttrs",
    "LayerArrays",
    "conv_attrs",
    "emit_layer",
    "pack_matmul_nbits",
]

#: Domain of onnxruntime's contrib ops (``MatMulNBits``), opset version 1.
MS_DOMAIN = "com.microsoft"

#: ``(strides, pads, dilations, (group,))`` of a convolution as flat int tuples (``latency.LayerShape.conv``).
ConvAttrs = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int]]


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def conv_attrs(conv) -> ConvAttrs:
    """``ConvAttrs`` of an ``nn.Conv2d``-like module (``padding="valid"`` is 0; ``"same"`` is refused with a
    ``ValueError``)."""
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    if padding == "same":
        raise ValueError("conv padding 'same' is not supported by onnxruntime-cpu forms; use integer padding")
    return (_pair(conv.stride), _pair(padding), _pair(conv.dilation), (int(conv.groups),))


@dataclass(frozen=True, eq=False)
class BlockWeight:
    """Block-wise weight codes for ``MatMulNBits``: ``codes`` ``[N, n_blocks, block_size]`` and ``zero_point``
    ``[N, n_blocks]`` (integers in ``[0, 2^bits - 1]``; K zero-padded to whole blocks), ``scale`` float32
    ``[N, n_blocks]``, ``bits`` 4 or 8, ``k`` the true K."""

    codes: np.ndarray
    zero_point: np.ndarray
    scale: np.ndarray
    bits: int
    k: int


@dataclass(frozen=True, eq=False)
class LayerArrays:
    """Everything one layer's nodes hold. kind: ``linear`` / ``conv`` / ``matmul``; weight: float32 in torch's layout
    (``[N, K]`` / ``[O, I, kh, kw]``, fp32 form), ``WeightCodes`` with axis 0 in torch's layout (int8 form),
    ``BlockWeight`` (block forms) or None (matmul); bias: float32 ``[N]`` or None; grids: the static input grids
    (int8 form: one per input operand); conv: ``ConvAttrs`` of a conv layer."""

    kind: str
    weight: np.ndarray | WeightCodes | BlockWeight | None = None
    bias: np.ndarray | None = None
    grids: tuple[Grid, ...] = ()
    conv: ConvAttrs | None = None


def pack_matmul_nbits(codes: np.ndarray, zero_point: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``MatMulNBits`` inputs ``B`` and ``zero_points`` from block codes.

    codes: integers in ``[0, 2^bits - 1]``, ``[N, n_blocks, block_size]``; zero_point: integers, ``[N, n_blocks]``
    (or ``[N, n_blocks, 1]``); bits: 4 or 8. Returns ``B`` uint8 ``[N, n_blocks, block_size * bits / 8]`` and
    ``zero_points`` uint8, 1-D: ``N * n_blocks`` bytes (8 bits) or ``N * ceil(n_blocks / 2)`` (4 bits, each row
    packed on its own). Raises ``OnnxExportError`` for other bits or out-of-range values.
    """
    if bits not in (4, 8):
        raise OnnxExportError(f"MatMulNBits weights are exported at 4 or 8 bits, got {bits}")
    codes = np.asarray(codes)
    zero = np.asarray(zero_point).reshape(codes.shape[0], codes.shape[1])
    qmax = 2**bits - 1
    for name, values in (("codes", codes), ("zero points", zero)):
        if values.size and (int(values.min()) < 0 or int(values.max()) > qmax):
            raise OnnxExportError(f"MatMulNBits {name} must lie in [0, {qmax}] for {bits} bits; "
                                  f"got [{int(values.min())}, {int(values.max())}]")
    if bits == 8:
        return np.ascontiguousarray(codes, np.uint8), zero.reshape(-1).astype(np.uint8)
    return pack_nibbles(codes), pack_nibbles(zero).reshape(-1)


def _product(sink: Sink, x: str, weight: str, bias: np.ndarray | None, output: str) -> None:
    """``MatMul(x, weight)`` (+ ``Add(bias)``) into ``output``."""
    if bias is None:
        sink.node("MatMul", [x, weight], output)
        return
    y = sink.node("MatMul", [x, weight])
    sink.node("Add", [y, sink.initializer("bias", bias)], output)


def _conv(sink: Sink, x: str, weight: str, arrays: LayerArrays, output: str) -> None:
    stride, pads, dilation, (group,) = arrays.conv
    names = [x, weight] + ([sink.initializer("bias", arrays.bias)] if arrays.bias is not None else [])
    sink.node("Conv", names, output, strides=list(stride), pads=[*pads, *pads], dilations=list(dilation),
              group=group)


def _fp32(sink: Sink, form: Form, arrays: LayerArrays, inputs: list[str], output: str) -> None:
    if arrays.kind == "matmul":
        sink.node("MatMul", inputs, output)
    elif arrays.kind == "linear":
        _product(sink, inputs[0], sink.initializer("weight", np.ascontiguousarray(arrays.weight.T)), arrays.bias,
                 output)
    else:
        _conv(sink, inputs[0], sink.initializer("weight", arrays.weight), arrays, output)


def _int8(sink: Sink, form: Form, arrays: LayerArrays, inputs: list[str], output: str) -> None:
    operands = [quantize_dequantize(sink, name, grid, f"inputs.{i}")
                for i, (name, grid) in enumerate(zip(inputs, arrays.grids, strict=True))]
    if arrays.kind == "matmul":
        sink.node("MatMul", operands, output)
    elif arrays.kind == "linear":
        _product(sink, operands[0], dequantize_weight(sink, arrays.weight.transposed()), arrays.bias, output)
    else:
        _conv(sink, operands[0], dequantize_weight(sink, arrays.weight), arrays, output)


def _nbits(sink: Sink, form: Form, arrays: LayerArrays, inputs: list[str], output: str) -> None:
    weight = arrays.weight
    n, _, block_size = weight.codes.shape
    packed, zero = pack_matmul_nbits(weight.codes, weight.zero_point, weight.bits)
    names = [inputs[0], sink.initializer("weight.packed", packed),
             sink.initializer("weight.scale", weight.scale.reshape(-1).astype(np.float32)),
             sink.initializer("weight.zero_point", zero)]
    y = output if arrays.bias is None else sink.value("MatMulNBits")
    sink.node("MatMulNBits", names, y, domain=MS_DOMAIN, version=1, K=int(weight.k), N=int(n), bits=weight.bits,
              block_size=int(block_size), accuracy_level=int(form.accuracy_level or 0))
    if arrays.bias is not None:
        sink.node("Add", [y, sink.initializer("bias", arrays.bias)], output)


#: The emitter of each form (by ``Form.name``).
EMITTERS: dict[str, Callable[[Sink, Form, LayerArrays, list[str], str], None]] = {
    "fp32": _fp32, "int8": _int8, "w8": _nbits, "w4": _nbits, "w4a8": _nbits,
}


def emit_layer(sink: Sink, inputs: list[str], output: str, *, form: Form, arrays: LayerArrays) -> None:
    """Append the nodes of one layer in ``form`` (module doc) to ``sink``: reads ``inputs``, writes ``output``.
    Raises ``OnnxExportError`` when ``arrays`` do not fit the form (a form of another layer kind, block codes at
    other bits than the form's)."""
    if arrays.kind not in form.kinds:
        raise OnnxExportError(f"form {form.name!r} has no {arrays.kind} layers; it runs {', '.join(form.kinds)}")
    expected = {"float": np.ndarray, "channel": WeightCodes, "block": BlockWeight}[form.weights]
    if arrays.kind != "matmul" and not isinstance(arrays.weight, expected):
        raise OnnxExportError(f"form {form.name!r} needs a {expected.__name__} weight, got "
                              f"{type(arrays.weight).__name__}")
    if form.weights == "block" and arrays.weight.bits != form.wbits:
        raise OnnxExportError(f"form {form.name!r} stores {form.wbits}-bit blocks, got {arrays.weight.bits}-bit codes")
    if form.activations == "static" and len(arrays.grids) != len(inputs):
        raise OnnxExportError(f"form {form.name!r} needs a static grid per input ({len(inputs)}), got "
                              f"{len(arrays.grids)}")
    EMITTERS[form.name](sink, form, arrays, inputs, output)
