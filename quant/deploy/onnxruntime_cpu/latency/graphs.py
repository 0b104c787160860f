"""One small ONNX graph per (layer shape, form): the layer's emitter (``..emit.emit_layer``, the one the export
uses) between graph inputs and an output, with random codes of the layer's shapes.

Inputs are named ``x`` (``a``, ``b`` for the attention matmuls), the output ``y``; the node pattern of each form is
in ``..emit``. Inputs have a symbolic batch dimension (``batch``), like the exported model, so onnxruntime applies
the same fusions; they are fed at batch 1. Weights, scales and codes are random but valid (no zero scales, codes
spread over the whole range; static input grids fit ~N(0, 1) inputs), seeded by the shape so a graph is
reproducible. ``overhead_graph`` is the trivial graph (``Identity`` per input) whose Run time is the per-call cost
that layer times exclude.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper

from ....export.graph import ONNX_OPSET, Sink
from ....export.qdq import Grid, WeightCodes
from ....target import FormError, form_by_name, forms_for
from ..emit import MS_DOMAIN, BlockWeight, LayerArrays, emit_layer
from ..forms import TARGET
from .layers import LayerShape

__all__ = ["OPSET", "TARGET", "graph_inputs", "layer_forms", "layer_graph", "overhead_graph", "random_arrays"]

#: ONNX default-domain opset of the graphs (the exported model's).
OPSET = ONNX_OPSET
_COMPONENT = {"linear": "linear", "conv": "patch_embed", "matmul": "matmul_qk"}
#: The static grid of the int8 form's inputs: uint8, scale 8 / 255, zero point 128 (inputs ~N(0, 1)).
_GRID = Grid(np.array(8.0 / 255.0, np.float32), np.array(128, np.uint8))


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


def _int8_codes(weight: np.ndarray) -> WeightCodes:
    """Symmetric int8 codes of ``weight`` per output channel (axis 0), zero points 0."""
    reduce = tuple(range(1, weight.ndim))
    scale = (np.abs(weight).max(axis=reduce) / 127.0).astype(np.float32)
    codes = np.clip(np.round(weight / scale.reshape(-1, *[1] * len(reduce))), -127, 127).astype(np.int8)
    return WeightCodes(codes, scale, np.zeros(scale.shape, np.int8), 0)


def _block_weight(shape: LayerShape, bits: int, block_size: int, rng: np.random.Generator) -> BlockWeight:
    """Random block codes over the whole range, zero points near the middle, scales ~0.05 / 2^(bits-1)."""
    n, k = shape.weight
    blocks = -(-k // block_size)
    codes = rng.integers(0, 2**bits, size=(n, blocks, block_size), dtype=np.uint8)
    zeros = rng.integers(2 ** (bits - 1) - 2, 2 ** (bits - 1) + 2, size=(n, blocks), dtype=np.uint8)
    scales = rng.uniform(0.5, 1.5, size=n * blocks).astype(np.float32) * (0.05 / 2 ** (bits - 1))
    return BlockWeight(codes, zeros, scales.reshape(n, blocks), bits, k)


def random_arrays(shape: LayerShape, form: str, block_size: int = 32) -> LayerArrays:
    """``LayerArrays`` of the layer shape in ``form`` with random (seeded by shape and form) weights and codes."""
    if shape.kind == "matmul":
        return LayerArrays("matmul", grids=(_GRID, _GRID) if form == "int8" else ())
    rng = _rng(shape, form)
    weight = (rng.standard_normal(shape.weight) * 0.05).astype(np.float32)
    spec = form_by_name(TARGET, _COMPONENT[shape.kind], form)
    grids: tuple[Grid, ...] = ()
    if spec.weights == "block":
        weight = _block_weight(shape, spec.wbits, block_size, rng)
    elif spec.weights == "channel":
        weight, grids = _int8_codes(weight), (_GRID,)
    bias = (rng.standard_normal(shape.weight[0]) * 0.02).astype(np.float32) if shape.has_bias else None
    return LayerArrays(shape.kind, weight, bias, grids, shape.conv or None)


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


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 10
    return model


def layer_graph(shape: LayerShape, form: str, *, block_size: int = 32) -> onnx.ModelProto:
    """The ONNX model of one layer in ``form`` (module docstring); raises ``FormError`` when the layer kind has no
    such form and ``ValueError`` for a bad ``block_size``."""
    _check_block_size(block_size)
    if form not in layer_forms(shape):
        raise FormError(f"a {shape.kind} layer has no onnxruntime-cpu form {form!r}; "
                        f"its forms are {', '.join(layer_forms(shape))}")
    names = ["a", "b"] if shape.kind == "matmul" else ["x"]
    sink = Sink()
    emit_layer(sink, names, "y", form=form_by_name(TARGET, _COMPONENT[shape.kind], form),
               arrays=random_arrays(shape, form, block_size))
    inputs = [_value(n, s) for n, s in zip(names, shape.inputs, strict=True)]
    graph = helper.make_graph(sink.nodes, f"{shape.kind}_{form}", inputs, [_value("y", _output_shape(shape))],
                              list(sink.initializers.values()))
    return _model(graph)


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
