"""One small ONNX graph per (layer shape, form): the exact node pattern the mixed export emits for that layer.

Node patterns (opset 21, ``com.microsoft`` 1; inputs named ``x`` / ``a``, ``b``; output ``y``):

- linear ``fp32``: ``MatMul(x, W[K, N])`` (+ ``Add(bias)``);
- linear ``int8``: ``QuantizeLinear(x, s_a, z_a uint8) -> DequantizeLinear``, weight ``DequantizeLinear(Wq int8
  [K, N], s_w [N], z_w int8 [N] = 0, axis=1)``, ``MatMul`` (+ ``Add``);
- linear ``w8`` / ``w4`` / ``w4a8``: ``com.microsoft.MatMulNBits(x, B uint8 [N, n_blocks, blob], scales [N *
  n_blocks], zero_points uint8)`` with K, N, bits, block_size, accuracy_level (0, 0, 4) (+ ``Add``); 4-bit codes
  and zero points two per byte, low nibble first;
- conv ``fp32``: ``Conv(x, W, b)``; conv ``int8``: Q/DQ (uint8) on x, ``DequantizeLinear(Wq int8, s [O], z int8
  [O] = 0, axis=0)``, ``Conv``;
- matmul ``fp32``: ``MatMul(a, b)``; matmul ``int8``: Q/DQ (uint8 per tensor) on ``a`` and on ``b``, ``MatMul``.

Inputs have a symbolic batch dimension (``batch``), like the exported model, so onnxruntime applies the same
fusions; they are fed at batch 1. Weights, scales and codes are random but valid (no zero scales, codes spread over the whole range), seeded by
the shape so a graph is reproducible. ``overhead_graph`` is the trivial graph (``Identity`` per input) whose Run
time is the per-call cost that layer times exclude.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..target import FormError, forms_for
from .layers import LayerShape

__all__ = ["OPSET", "TARGET", "graph_inputs", "layer_forms", "layer_graph", "overhead_graph"]

#: ONNX default-domain opset and the target the graphs are built for.
OPSET = 21
TARGET = "onnxruntime-cpu"
_COMPONENT = {"linear": "linear", "conv": "patch_embed", "matmul": "matmul_qk"}


def layer_forms(shape: LayerShape, allowed: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """Names of the onnxruntime-cpu forms of a layer kind, restricted to ``allowed`` (empty: all)."""
    return tuple(f.name for f in forms_for(TARGET, _COMPONENT[shape.kind], tuple(allowed)))


def _rng(shape: LayerShape, form: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{shape.key}/{form}".encode()))


def graph_inputs(shape: LayerShape, seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed random float32 inputs for a layer graph (post-softmax-like values in [0, 1) for matmul ``a``)."""
    rng = np.random.default_rng(seed + zlib.crc32(shape.key.encode()))
    if shape.kind == "matmul":
        a_shape, b_shape = shape.inputs
        return {"a": rng.random(a_shape, dtype=np.float32), "b": rng.standard_normal(b_shape, dtype=np.float32)}
    return {"x": rng.standard_normal(shape.inputs[0], dtype=np.float32)}


def _value(name: str, shape) -> onnx.ValueInfoProto:
    """A float tensor whose first (batch) dimension is symbolic, as in the exported model: with a fixed batch
    onnxruntime rewrites a 3-D ``MatMul + Add`` into ``Reshape/Gemm`` and then no longer fuses the QDQ pattern into
    ``MatMulIntegerToFloat``, which the whole model (dynamic batch) does."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *list(shape)[1:]])


def _qdq(name: str, inits: list, nodes: list) -> str:
    """Append ``QuantizeLinear -> DequantizeLinear`` (uint8 per tensor, inputs ~N(0, 1) fit) on ``name``."""
    inits += [numpy_helper.from_array(np.array(8.0 / 255.0, np.float32), f"{name}_s"),
              numpy_helper.from_array(np.array(128, np.uint8), f"{name}_z")]
    nodes += [helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]
    return f"{name}_dq"


def _int8_weight(weight: np.ndarray, axis: int, inits: list, nodes: list) -> str:
    """Symmetric int8 codes of ``weight`` per channel along ``axis`` and their ``DequantizeLinear``."""
    reduce = tuple(d for d in range(weight.ndim) if d != axis)
    scale = (np.abs(weight).max(axis=reduce) / 127.0).astype(np.float32)
    view = [1] * weight.ndim
    view[axis] = -1
    codes = np.clip(np.round(weight / scale.reshape(view)), -127, 127).astype(np.int8)
    inits += [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(scale, "w_s"),
              numpy_helper.from_array(np.zeros(scale.shape, np.int8), "w_z")]
    nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], axis=axis))
    return "w_dq"


def _pack4(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis, the even index in the low nibble (odd length: zero pad)."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), codes.dtype)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _nbits(shape: LayerShape, form: str, block_size: int, rng, inits: list, nodes: list, x: str, out: str) -> None:
    """Append ``MatMulNBits`` of random block-quantized weights (scale and zero point per K-block)."""
    bits, level = {"w8": (8, 0), "w4": (4, 0), "w4a8": (4, 4)}[form]
    n, k = shape.weight
    blocks = -(-k // block_size)
    codes = rng.integers(0, 2**bits, size=(n, blocks, block_size), dtype=np.uint8)
    zeros = rng.integers(2 ** (bits - 1) - 2, 2 ** (bits - 1) + 2, size=(n, blocks), dtype=np.uint8)
    scales = rng.uniform(0.5, 1.5, size=n * blocks).astype(np.float32) * (0.05 / 2 ** (bits - 1))
    if bits == 4:
        codes, zeros = _pack4(codes), _pack4(zeros)
    inits += [numpy_helper.from_array(codes, "w_b"), numpy_helper.from_array(scales, "w_scales"),
              numpy_helper.from_array(zeros.reshape(-1), "w_zp")]
    nodes.append(helper.make_node("MatMulNBits", [x, "w_b", "w_scales", "w_zp"], [out], domain="com.microsoft",
                                  K=k, N=n, bits=bits, block_size=block_size, accuracy_level=level))


def _output_shape(shape: LayerShape) -> list:
    if shape.kind == "matmul":
        a, b = shape.inputs
        return [*a[:-1], b[-1]]
    if shape.kind == "linear":
        return [*shape.inputs[0][:-1], shape.weight[0]]
    return [None] * 4  # conv: onnx shape inference fills it in


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size!r}")


def layer_graph(shape: LayerShape, form: str, *, block_size: int = 32) -> onnx.ModelProto:
    """The ONNX model of one layer in ``form`` (module docstring); raises ``FormError`` when the layer kind has no
    such form and ``ValueError`` for a bad ``block_size``."""
    _check_block_size(block_size)
    if form not in layer_forms(shape):
        raise FormError(f"a {shape.kind} layer has no onnxruntime-cpu form {form!r}; "
                        f"its forms are {', '.join(layer_forms(shape))}")
    rng = _rng(shape, form)
    inits: list = []
    nodes: list = []
    if shape.kind == "matmul":
        inputs = [_value("a", shape.inputs[0]), _value("b", shape.inputs[1])]
        a, b = ("a", "b") if form == "fp32" else (_qdq("a", inits, nodes), _qdq("b", inits, nodes))
        nodes.append(helper.make_node("MatMul", [a, b], ["y"]))
    else:
        inputs = [_value("x", shape.inputs[0])]
        weight = (rng.standard_normal(shape.weight) * 0.05).astype(np.float32)
        out = "y_nobias" if shape.has_bias else "y"
        if shape.kind == "linear":
            if form in ("fp32", "int8"):
                x = "x" if form == "fp32" else _qdq("x", inits, nodes)
                if form == "fp32":
                    inits.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), "w"))
                    w = "w"
                else:
                    w = _int8_weight(np.ascontiguousarray(weight.T), 1, inits, nodes)
                nodes.append(helper.make_node("MatMul", [x, w], [out]))
            else:
                _nbits(shape, form, block_size, rng, inits, nodes, "x", out)
            if shape.has_bias:
                inits.append(numpy_helper.from_array((rng.standard_normal(shape.weight[0]) * 0.02)
                                                     .astype(np.float32), "bias"))
                nodes.append(helper.make_node("Add", [out, "bias"], ["y"]))
        else:
            stride, pads, dilation, (groups,) = shape.conv
            x = "x" if form == "fp32" else _qdq("x", inits, nodes)
            if form == "fp32":
                inits.append(numpy_helper.from_array(weight, "w"))
                w = "w"
            else:
                w = _int8_weight(weight, 0, inits, nodes)
            conv_inputs = [x, w]
            if shape.has_bias:
                inits.append(numpy_helper.from_array((rng.standard_normal(shape.weight[0]) * 0.02)
                                                     .astype(np.float32), "bias"))
                conv_inputs.append("bias")
            nodes.append(helper.make_node("Conv", conv_inputs, ["y"], strides=list(stride),
                                          pads=[*pads, *pads], dilations=list(dilation), group=groups))
    graph = helper.make_graph(nodes, f"{shape.kind}_{form}", inputs, [_value("y", _output_shape(shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def overhead_graph(shape: LayerShape) -> onnx.ModelProto:
    """``Identity`` on every input of the layer's graph: its Run time is the per-call overhead (binding, output
    copy, Python) that a layer's in-graph time does not include."""
    names = ("a", "b") if shape.kind == "matmul" else ("x",)
    inputs = [_value(n, s) for n, s in zip(names, shape.inputs, strict=True)]
    outputs = [_value(f"{n}_out", s) for n, s in zip(names, shape.inputs, strict=True)]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in names]
    model = helper.make_model(helper.make_graph(nodes, f"{shape.kind}_overhead", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model
