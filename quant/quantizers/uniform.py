"""Asymmetric uniform fake quantization for activations (per-tensor, or dynamic per-token scale)."""

from __future__ import annotations

import torch
from torch import nn

from .base import ActivationQuantizer, round_ste

__all__ = ["UniformQuantizer", "fake_quant_uniform", "search_uniform_range"]

_LOW_QUANTILES = (0.0, 1e-3, 1e-2, 3e-2)
_HIGH_QUANTILES = (1.0, 1 - 1e-4, 1 - 1e-3, 1 - 3e-3, 1 - 1e-2, 1 - 3e-2)
#: The range search scores candidates on at most this many values (a fixed-seed subsample).
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


def _scale_zero(low: torch.Tensor, high: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    span = torch.clamp(high - low, min=1e-8)
    scale = span / (2**bits - 1)
    zero = torch.round(-low / scale)
    return scale, zero


@torch.no_grad()
def search_uniform_range(sample: torch.Tensor, bits: int, minmax: bool = False) -> tuple[float, float]:
    """Choose ``(low, high)`` clipping of a 1-D sample minimising the quantization MSE.

    Candidates are pairs of low/high quantiles of the sample; ``minmax=True`` returns the plain extremes.
    """
    sample = sample.float()
    low_all, high_all = sample.min(), sample.max()
    if minmax or bits >= 16:
        return float(low_all), float(high_all)
    lows = torch.quantile(sample, torch.tensor(_LOW_QUANTILES, device=sample.device))
    highs = torch.quantile(sample, torch.tensor(_HIGH_QUANTILES, device=sample.device))
    if sample.numel() > _SEARCH_VALUES:
        pick = torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(0))[:_SEARCH_VALUES]
        sample = sample[pick.to(sample.device)]
    best = (float("inf"), float(low_all), float(high_all))
    for low in lows:
        for high in highs:
            if high <= low:
                continue
            scale, zero = _scale_zero(low, high, bits)
            err = (fake_quant_uniform(sample, scale, zero, bits) - sample).pow(2).mean().item()
            if err < best[0]:
                best = (err, float(low), float(high))
    return best[1], best[2]


class UniformQuantizer(ActivationQuantizer):
    """Asymmetric uniform activation quantizer.

    ``granularity="tensor"``: one learned-able scale and a zero point, ranges from a calibration search
    (MSE over quantile clipping) or plain min/max (``minmax=True``).
    ``granularity="token"``: per-token scale and zero point computed on the fly from each token's min/max
    (last dimension is the channel dimension); no calibration needed.
    """

    fit_params = ("scale", "zero_point")
    kind = "uniform"

    def __init__(self, bits: int = 8, granularity: str = "tensor", minmax: bool = False) -> None:
        super().__init__(bits)
        if granularity not in ("tensor", "token"):
            raise ValueError(f"granularity must be 'tensor' or 'token', got {granularity!r}")
        self.granularity = granularity
        self.minmax = minmax
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.register_buffer("zero_point", torch.tensor(0.0))

    def set_range(self, low: float, high: float) -> None:
        """Set the quantization grid so that ``[low, high]`` is covered at the current bit-width."""
        scale, zero = _scale_zero(torch.tensor(low), torch.tensor(high), self.bits)
        with torch.no_grad():
            self.scale.copy_(scale)
            self.zero_point.copy_(zero)

    def fit(self, sample: torch.Tensor) -> None:
        if self.granularity == "token":
            return
        low, high = search_uniform_range(sample, self.bits, minmax=self.minmax)
        self.set_range(low, high)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.granularity == "token":
            low = x.detach().amin(dim=-1, keepdim=True)
            high = x.detach().amax(dim=-1, keepdim=True)
            scale, zero = _scale_zero(low, high, self.bits)
            return fake_quant_uniform(x, scale, zero, self.bits)
        return fake_quant_uniform(x, self.scale, self.zero_point, self.bits)

    def describe(self) -> dict:
        info = super().describe()
        info["granularity"] = self.granularity
        if self.granularity == "tensor":
            info.update(scale=float(self.scale), zero_point=float(self.zero_point))
        return info
