"""The forward of every params type: ``fake_quant(x, params)`` for activations, ``quantize_weight`` for weights."""

from __future__ import annotations

import torch

from .log2 import log2_fake_quant
from .params import AffineParams, DynamicParams, Log2Params, TanQParams, WeightParams
from .tanq import tanq_fake_quant
from .training import QDropInput, SoftRoundedWeight, fake_quant_qdrop
from .uniform import dynamic_block_quant, dynamic_token_quant, fake_quant_uniform
from .weight import fake_quant_weight

__all__ = ["fake_quant", "quantize_weight"]


def fake_quant(x: torch.Tensor, params) -> torch.Tensor:
    """``x`` quantized and dequantized as ``params`` say (None: ``x`` unchanged). Float in, float out; rounding is
    straight-through wherever autograd is on."""
    if params is None:
        return x
    if isinstance(params, AffineParams):
        return fake_quant_uniform(x, params.scale, params.zero_point, params.bits)
    if isinstance(params, TanQParams):
        return tanq_fake_quant(x, params.a, params.bits, params.c)
    if isinstance(params, Log2Params):
        return log2_fake_quant(x, params.scale, params.bits)
    if isinstance(params, DynamicParams):
        if params.granularity == "block":
            return dynamic_block_quant(x, params.block_size)
        return dynamic_token_quant(x, params.bits)
    if isinstance(params, QDropInput):
        keep = params.keep(x.shape, x.dtype)
        inner = params.inner
        if isinstance(inner, AffineParams):
            return fake_quant_qdrop(x, inner.scale, inner.zero_point, inner.bits, keep)
        return torch.lerp(x, fake_quant(x, inner), keep)
    raise TypeError(f"not activation params: {type(params).__name__}")


def quantize_weight(weight: torch.Tensor, params) -> torch.Tensor:
    """``weight`` as the layer computes with it under ``params`` (None: float; :class:`SoftRoundedWeight`: the soft
    AdaRound weight while reconstruction trains)."""
    if params is None or isinstance(params, WeightParams):
        return fake_quant_weight(weight, params)
    if isinstance(params, SoftRoundedWeight):
        return params.dequantized()
    raise TypeError(f"not weight params: {type(params).__name__}")
