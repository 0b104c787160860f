"""The target mode of ``quant.export.export_onnx``: every ``onnxruntime-cpu`` layer becomes one placeholder that its
form's emitter (``emit.emit_layer``) replaces with the form's nodes, written from the layer's own codes and params.

``layer_arrays(layer, name)`` reads what the nodes hold from the layer's current params and refuses params that the
form would run differently from the torch simulation (``OnnxExportError`` naming the layer): asymmetric weights in
``int8``, input grids that are not ``uint8`` per tensor, per-channel weights in a block form, a ``w4a8`` input that
is not the kernel's own dynamic int8 blocks, quantized params in ``fp32``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from ...export.graph import OnnxExportError
from ...export.placeholder import Placeholders
from ...export.qdq import grid_of, weight_codes_of
from ...modules import QuantConv2d, QuantLayer, QuantLinear, QuantMatMul
from ...quantizers import DynamicParams, WeightParams
from ...quantizers.weight import padded_block_codes
from ..form import layer_kind
from .emit import BlockWeight, LayerArrays, conv_attrs, emit_layer

__all__ = ["export_layer", "layer_arrays"]


def _numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().float().cpu().numpy()


def _grid(params, name: str):
    """The uint8 per-tensor grid of an int8 form's input; ``OnnxExportError`` for anything else."""
    if params is None:
        raise OnnxExportError(f"layer {name!r}: an int8 form needs 8-bit input params")
    grid = grid_of(params)
    if grid is None:
        what = {"kind": params.kind, "granularity": getattr(params, "granularity", None), "bits": params.bits}
        zero = getattr(params, "zero_point", None)
        if zero is not None and zero.numel() == 1:
            what["zero_point"] = float(zero)
        raise OnnxExportError(f"layer {name!r}: its input params {what} are not a uint8 per-tensor grid with a "
                              "zero point in [0, 255]; onnxruntime cannot run this int8 form")
    return grid


def _block_weight(layer: QuantLinear, name: str, form) -> BlockWeight:
    params = layer.params.weight
    if not isinstance(params, WeightParams) or params.block_size is None:
        raise OnnxExportError(f"layer {name!r} has form {form.name!r} but its weight params are not "
                              "block-wise; load the table entry of its form")
    if form.activations == "dynamic_block":
        _check_dynamic_blocks(layer.params.inputs[0], params.block_size, name)
    with torch.no_grad():
        codes = padded_block_codes(layer.weight.detach().float(), params)
    zero = params.zero_point.detach().reshape(codes.shape[0], codes.shape[1])
    return BlockWeight(codes.to(torch.int64).cpu().numpy(), zero.to(torch.int64).cpu().numpy(),
                       _numpy(params.scale).reshape(codes.shape[0], codes.shape[1]), int(params.bits),
                       int(layer.weight.shape[1]))


def _check_dynamic_blocks(params, block_size: int, name: str) -> None:
    """``w4a8``: ``MatMulNBits`` (accuracy_level 4) quantizes its input to int8 per row and block of the weight's
    ``block_size`` itself, so the layer's input params must be exactly those dynamic blocks (else the torch model
    computes something onnxruntime does not)."""
    if isinstance(params, DynamicParams) and params.granularity == "block" and params.block_size == block_size:
        return
    what = {"kind": getattr(params, "kind", None), "granularity": getattr(params, "granularity", None),
            "block_size": getattr(params, "block_size", None), "bits": getattr(params, "bits", None)}
    raise OnnxExportError(f"layer {name!r}: its input params {what} are not the dynamic int8 blocks of {block_size} "
                          "that MatMulNBits (accuracy_level 4) computes; load the table entry of its form")


def layer_arrays(layer: QuantLayer, name: str) -> LayerArrays:
    """What the nodes of ``layer`` in its current form hold (``emit.LayerArrays``), from its params (module doc)."""
    form = layer.form
    kind = layer_kind(layer.component)
    params = layer.params
    bias = _numpy(getattr(layer, "bias", None))
    conv = conv_attrs(layer) if isinstance(layer, QuantConv2d) else None
    if form.weights == "float" and form.activations == "float":
        if params.weight is not None or any(p is not None for p in params.inputs):
            raise OnnxExportError(f"layer {name!r} has form 'fp32' but quantizes its weights or inputs "
                                  f"(w{layer.wbits}a{layer.abits}); load the table entry of its form")
        weight = None if isinstance(layer, QuantMatMul) else _numpy(layer.weight)
        return LayerArrays(kind, weight, bias, (), conv)
    if form.weights == "block":
        return LayerArrays(kind, _block_weight(layer, name, form), bias, (), conv)
    weight = None
    if form.weights == "channel":
        if not isinstance(params.weight, WeightParams) or not params.weight.symmetric:
            raise OnnxExportError(f"layer {name!r} has form {form.name!r} but its weights are not symmetric")
        weight = weight_codes_of(layer.weight, params.weight)
    grids = tuple(_grid(p, name) for p in params.inputs)
    return LayerArrays(kind, weight, bias, grids, conv)


def _output_shape(layer: QuantLayer):
    """The placeholder's output shape as a function of its inputs (symbolic batch sizes pass through)."""
    if isinstance(layer, QuantMatMul):
        return lambda a, b: (*a.shape[:-1], b.shape[-1])
    if isinstance(layer, QuantLinear):
        return lambda x: (*x.shape[:-1], layer.out_features)
    (sh, sw), (ph, pw), (dh, dw), _ = conv_attrs(layer)
    kh, kw = layer.weight.shape[2:]

    def conv(x):
        height = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        width = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return (x.shape[0], layer.out_channels, height, width)
    return conv


def export_layer(layer: QuantLayer, name: str, placeholders: Placeholders) -> nn.Module:
    """The export module of an ``onnxruntime-cpu`` layer: a placeholder keyed ``name`` whose emitter writes the
    layer's form with its arrays. Raises ``OnnxExportError`` when the params do not fit the form."""
    emitter = functools.partial(emit_layer, form=layer.form, arrays=layer_arrays(layer, name))
    return placeholders.add(name, emitter, _output_shape(layer))
