"""Uniform weight quantization: the fast range fit, the fake quantizer and integer codes of :class:`WeightParams`.

Layouts (``scale``/``zero_point`` shapes; codes always in ``[0, 2^b - 1]``, dequantized as ``(q - zp) * scale``):

- per channel (``layout="channel"``): ``[out, 1, ...]``, zp integer in ``[0, 2^b - 1]``;
- symmetric per channel (``"symmetric"``): same shapes, ``zp == 2^(b-1)`` everywhere and
  ``scale = r * max|w| / (2^(b-1) - 1)`` (``r`` from the shrink grid), so the signed code ``q - 2^(b-1)`` is an
  ``int8`` weight with zero point 0 (what onnxruntime's QDQ int8 kernels want);
- block-wise (``"block"``, linear weights [out, K] only): the weight is padded with zeros along K to
  ``n_blocks * B`` (``n_blocks = ceil(K / B)``) and viewed as [out, n_blocks, B]; ``[out, n_blocks, 1]`` scales
  and integer zero points; the fake-quantized result is cropped back to K.
"""

from __future__ import annotations

import torch

from .params import WeightParams
from .uniform import fake_quant_uniform

__all__ = [
    "block_view",
    "dequantize_codes",
    "fake_quant_weight",
    "fit_weight",
    "n_blocks",
    "padded_block_codes",
    "params_shape",
    "weight_codes",
]

#: Clipping grid: each candidate range is [quantile(1-p), quantile(p)] per output channel, then shrunk by r.
_PERCENTILES = (1.0, 0.999, 0.99)
_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def n_blocks(k: int, block_size: int) -> int:
    """Blocks of ``block_size`` covering ``k`` input elements (the last one zero-padded)."""
    return -(-int(k) // int(block_size))


def block_view(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """``weight`` [out, K] zero-padded along K and viewed as [out, n_blocks, block_size]."""
    if weight.dim() != 2:
        raise ValueError(f"block-wise weights need a 2-D [out, K] weight, got shape {tuple(weight.shape)}")
    out, k = weight.shape
    pad = n_blocks(k, block_size) * block_size - k
    if pad:
        weight = torch.nn.functional.pad(weight, (0, pad))
    return weight.reshape(out, -1, block_size)


def params_shape(weight_shape: tuple[int, ...], block_size: int | None) -> tuple[int, ...]:
    """Shape of a weight's scales/zero points: per channel ``[out, 1, ...]``, block-wise ``[out, n_blocks, 1]``."""
    if block_size is not None:
        return (weight_shape[0], n_blocks(weight_shape[-1], block_size), 1)
    return (weight_shape[0],) + (1,) * (len(weight_shape) - 1)


def _row_mse(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-row mean squared quantization error (no autograd, few temporaries)."""
    q = torch.div(w, scale).round_().add_(zero).clamp_(0, qmax)
    return q.sub_(zero).mul_(scale).sub_(w).square_().mean(dim=1)


def _search_rows(w: torch.Tensor, bits: int, minmax: bool, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of ``w`` [rows, n] minimising each row's MSE over the percentile x shrink grid.

    Asymmetric: range ``[min(r lo_p, 0), max(r hi_p, 0)]``. Symmetric: ``scale = r |w|_p / (2^(b-1) - 1)``,
    zero ``2^(b-1)``. Returns float tensors of shape [rows]."""
    qmax = 2**bits - 1
    half = 2 ** (bits - 1)
    percentiles = (1.0,) if minmax else _PERCENTILES
    shrinks = (1.0,) if minmax else _SHRINK
    source = w.abs() if symmetric else w
    ordered = source.sort(dim=1).values if len(percentiles) > 1 else source
    last = w.shape[1] - 1
    best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
    best_scale = torch.ones(w.shape[0], device=w.device)
    best_zero = torch.zeros(w.shape[0], device=w.device)
    for p in percentiles:
        k = 0 if p == 1.0 else min(round((1 - p) * last), last)
        if symmetric:
            amax_p = source.amax(dim=1) if p == 1.0 else ordered[:, last - k]
        elif p == 1.0:
            low_p, high_p = w.amin(dim=1), w.amax(dim=1)
        else:
            low_p, high_p = ordered[:, k], ordered[:, last - k]
        for r in shrinks:
            if symmetric:
                scale = torch.clamp(amax_p * r, min=1e-8) / (half - 1)
                zero = torch.full_like(scale, float(half))
            else:
                low = torch.minimum(low_p * r, torch.zeros_like(low_p))
                high = torch.maximum(high_p * r, torch.zeros_like(high_p))
                scale = torch.clamp(high - low, min=1e-8) / qmax
                zero = torch.round(-low / scale)
            err = _row_mse(w, scale[:, None], zero[:, None], qmax)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


@torch.no_grad()
def fit_weight(weight: torch.Tensor, bits: int, *, layout: str = "channel", block_size: int | None = None,
               minmax: bool = False) -> WeightParams:
    """The fast fit of ``weight`` [out, ...] at ``bits``: each channel's (block's) range by a grid search over
    percentile clipping and shrink factors minimising its weight MSE (``minmax``: plain min/max, or max |w| when
    symmetric). layout: ``channel``, ``symmetric`` or ``block`` (with ``block_size``)."""
    block = block_size if layout == "block" else None
    shape = params_shape(tuple(weight.shape), block)
    if block is not None:
        rows = block_view(weight.detach().float(), block).reshape(-1, block)
    else:
        rows = weight.detach().float().reshape(weight.shape[0], -1)
    scale, zero = _search_rows(rows, bits, minmax, layout == "symmetric")
    return WeightParams(scale.reshape(shape).to(weight.dtype), zero.reshape(shape).to(weight.dtype), int(bits),
                        layout, block)


def weight_codes(weight: torch.Tensor, params: WeightParams) -> torch.Tensor:
    """The integer codes in ``[0, 2^bits - 1]`` (float tensor shaped like ``weight``): the learned ``codes`` when
    the params carry them, else ``clamp(round(w / scale) + zero, 0, 2^b - 1)`` (block layout: on the padded view,
    cropped back)."""
    if params.codes is not None:
        return params.codes.to(params.scale.dtype)
    qmax = 2**params.bits - 1
    if params.block_size is not None:
        blocks = block_view(weight, params.block_size)
        codes = torch.clamp(torch.round(blocks / params.scale) + params.zero_point, 0, qmax)
        return codes.reshape(weight.shape[0], -1)[:, : weight.shape[1]]
    return torch.clamp(torch.round(weight / params.scale) + params.zero_point, 0, qmax)


def padded_block_codes(weight: torch.Tensor, params: WeightParams) -> torch.Tensor:
    """Block layout: the codes ``[out, n_blocks, block_size]`` of the zero-padded weight (padding codes are the
    block's zero point, i.e. exactly 0 after dequantization), as MatMulNBits stores them; learned codes when the
    params carry them."""
    if params.block_size is None:
        raise ValueError("padded_block_codes needs block-layout weight params")
    if params.codes is None:
        blocks = block_view(weight, params.block_size)
        return torch.clamp(torch.round(blocks / params.scale) + params.zero_point, 0, 2**params.bits - 1)
    codes = block_view(params.codes.to(params.scale.dtype), params.block_size)
    k = weight.shape[1]
    padding = torch.arange(codes.shape[1] * codes.shape[2], device=codes.device).reshape(1, *codes.shape[1:]) >= k
    return torch.where(padding, params.zero_point.expand_as(codes), codes)


def dequantize_codes(codes: torch.Tensor, params: WeightParams) -> torch.Tensor:
    """``(codes - zero) * scale`` in the scale's dtype, the same float operations as :func:`fake_quant_uniform`
    (block layout: on the zero-padded [out, n_blocks, block_size] view, cropped back to [out, K])."""
    codes = codes.to(params.scale.dtype)
    if params.block_size is None:
        return (codes - params.zero_point) * params.scale
    blocks = block_view(codes, params.block_size)
    return ((blocks - params.zero_point) * params.scale).reshape(codes.shape[0], -1)[:, : codes.shape[1]]


def fake_quant_weight(weight: torch.Tensor, params: WeightParams | None) -> torch.Tensor:
    """``weight`` quantized and dequantized with ``params`` (None: unchanged). With learned ``codes`` the result is
    ``(codes - zero) * scale`` (the float weight is not read); otherwise nearest rounding, straight-through."""
    if params is None:
        return weight
    if params.codes is not None:
        return dequantize_codes(params.codes, params)
    if params.block_size is None:
        return fake_quant_uniform(weight, params.scale, params.zero_point, params.bits)
    blocks = block_view(weight, params.block_size)
    out = fake_quant_uniform(blocks, params.scale, params.zero_point, params.bits)
    return out.reshape(weight.shape[0], -1)[:, : weight.shape[1]]
