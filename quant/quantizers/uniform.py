"""Asymmetric uniform activation quantization: the fake quantizer, dynamic variants and the fast range fit.

Static grids are :class:`~quant.quantizers.params.AffineParams` (per tensor, per token position or per head; the
grouped ones come from the output-aware search in ``quant.calibration``). Dynamic quantization computes its range at
run time: per token (each row's min/max) or int8 symmetric per row and block (:func:`dynamic_block_quant`).
"""

from __future__ import annotations

import torch

from .params import AffineParams
from .ste import round_ste

__all__ = [
    "affine_from_range",
    "dynamic_block_quant",
    "dynamic_token_quant",
    "fake_quant_uniform",
    "fit_uniform",
    "scale_zero",
    "search_uniform_range",
    "union_range",
    "zero_in_range",
]

_LOW_QUANTILES = (0.0, 1e-3, 1e-2, 3e-2)
_HIGH_QUANTILES = (1.0, 1 - 1e-4, 1 - 1e-3, 1 - 3e-3, 1 - 1e-2, 1 - 3e-2)
#: The range fit scores candidates on at most this many values (a fixed-seed subsample).
_SEARCH_VALUES = 16384


def fake_quant_uniform(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize ``x`` on the grid ``(q - z) * s`` with ``q`` in ``[0, 2^bits - 1]``.

    ``scale``/``zero_point`` broadcast against ``x``. Rounding is straight-through, so gradients reach both
    ``x`` (inside the range) and ``scale`` (LSQ-style).
    """
    qmax = 2**bits - 1
    if not torch.is_grad_enabled() or not (x.requires_grad or scale.requires_grad):
        return torch.div(x, scale).round_().add_(zero_point).clamp_(0, qmax).sub_(zero_point).mul_(scale)
    q = torch.clamp(round_ste(x / scale) + zero_point, 0, qmax)
    return (q - zero_point) * scale


def scale_zero(low: torch.Tensor, high: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero point)`` of the grid covering ``[low, high]`` at ``bits`` (elementwise for tensors)."""
    span = torch.clamp(high - low, min=1e-8)
    scale = span / (2**bits - 1)
    zero = torch.round(-low / scale)
    return scale, zero


def dynamic_token_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Dynamic asymmetric fake quantization with each row's (last dim) own min/max."""
    low = x.detach().amin(dim=-1, keepdim=True)
    high = x.detach().amax(dim=-1, keepdim=True)
    scale, zero = scale_zero(low, high, bits)
    return fake_quant_uniform(x, scale, zero, bits)


def dynamic_block_quant(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Dynamic symmetric int8 fake quantization per row and per block of ``block_size`` along the last dim.

    What onnxruntime's ``MatMulNBits`` with ``accuracy_level=4`` does to its float input: for each row (all
    leading dims) and block (the last block zero-padded), ``scale = amax / 127``, ``inv = 1 / scale`` (0 where
    ``scale == 0``), ``q = clamp(round(x * inv), -128, 127)`` (round half to even), result ``q * scale``; all in
    float32. Rounding is straight-through for gradients.
    """
    k = x.shape[-1]
    pad = -k % block_size
    blocks = torch.nn.functional.pad(x, (0, pad)) if pad else x
    blocks = blocks.reshape(*x.shape[:-1], -1, block_size)
    scale = blocks.detach().abs().amax(dim=-1, keepdim=True) / 127.0
    inv = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
    q = torch.clamp(round_ste(blocks * inv), -128, 127)
    out = (q * scale).reshape(*x.shape[:-1], -1)
    return out[..., :k] if pad else out


def zero_in_range(scale: torch.Tensor, zero: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid ``(scale, zero)`` widened where needed so that its range contains 0 (unchanged where it does), so
    the zero point is a code (what a uint8 ``QuantizeLinear`` needs)."""
    qmax = 2**bits - 1
    inside = (zero >= 0) & (zero <= qmax)
    if bool(inside.all()):
        return scale, zero
    low = torch.clamp(-zero * scale, max=0)
    high = torch.clamp((qmax - zero) * scale, min=0)
    new_scale, new_zero = scale_zero(low, high, bits)
    return torch.where(inside, scale, new_scale), torch.where(inside, zero, new_zero)


def affine_from_range(low: float | torch.Tensor, high: float | torch.Tensor, bits: int, *,
                      include_zero: bool = False, device: torch.device | str | None = None) -> AffineParams:
    """Per-tensor :class:`AffineParams` covering ``[low, high]`` at ``bits``; include_zero: widen so 0 is a code."""
    low_t = torch.as_tensor(low, dtype=torch.float32, device=device)
    high_t = torch.as_tensor(high, dtype=torch.float32, device=device)
    scale, zero = scale_zero(low_t, high_t, bits)
    if include_zero:
        scale, zero = zero_in_range(scale, zero, bits)
    return AffineParams(scale, zero, bits, "tensor")


def union_range(params: AffineParams) -> AffineParams:
    """One per-tensor grid covering the union of a grouped grid's ranges (for inputs it cannot broadcast against)."""
    qmax = 2**params.bits - 1
    low = ((0 - params.zero_point) * params.scale).amin()
    high = ((qmax - params.zero_point) * params.scale).amax()
    scale, zero = scale_zero(low, high, params.bits)
    return AffineParams(scale, zero, params.bits, "tensor")


@torch.no_grad()
def search_uniform_range(sample: torch.Tensor, bits: int, minmax: bool = False,
                         include_zero: bool = False) -> tuple[float, float]:
    """Choose ``(low, high)`` clipping of a 1-D sample minimising the quantization MSE.

    Candidates are pairs of low/high quantiles of the sample; ``minmax=True`` returns the plain extremes.
    include_zero: every candidate range contains 0 (``low <= 0 <= high``, so the zero point is a code).
    """
    sample = sample.float()
    low_all, high_all = sample.min(), sample.max()
    if include_zero:
        low_all, high_all = low_all.clamp(max=0), high_all.clamp(min=0)
    if minmax:
        return float(low_all), float(high_all)
    lows = torch.quantile(sample, torch.tensor(_LOW_QUANTILES, device=sample.device))
    highs = torch.quantile(sample, torch.tensor(_HIGH_QUANTILES, device=sample.device))
    if include_zero:
        lows, highs = lows.clamp(max=0), highs.clamp(min=0)
    if sample.numel() > _SEARCH_VALUES:
        generator = torch.Generator(device=sample.device).manual_seed(0)
        pick = torch.randperm(sample.numel(), generator=generator, device=sample.device)[:_SEARCH_VALUES]
        sample = sample[pick]
    pairs = [(low, high) for low in lows for high in highs if high > low]
    if not pairs:
        return float(low_all), float(high_all)
    low_t = torch.stack([p[0] for p in pairs]).reshape(-1, 1)
    high_t = torch.stack([p[1] for p in pairs]).reshape(-1, 1)
    scale, zero = scale_zero(low_t, high_t, bits)
    errors = (fake_quant_uniform(sample.unsqueeze(0), scale, zero, bits) - sample).pow(2).mean(dim=1)
    best = int(errors.argmin())
    return float(low_t[best, 0]), float(high_t[best, 0])


def fit_uniform(sample: torch.Tensor, bits: int, *, minmax: bool = False, include_zero: bool = False) -> AffineParams:
    """The fast per-tensor fit of a 1-D value sample: the quantile pair with the least quantization MSE
    (``minmax``: the sample's min and max); include_zero: the range contains 0 (uint8 ``QuantizeLinear``)."""
    low, high = search_uniform_range(sample, bits, minmax=minmax, include_zero=include_zero)
    return affine_from_range(low, high, bits, include_zero=include_zero, device=sample.device)
