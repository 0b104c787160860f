"""Asymmetric uniform per-output-channel weight quantizer with an MSE range search."""

from __future__ import annotations

import torch
from torch import nn

from .base import FLOAT_BITS
from .uniform import fake_quant_uniform

__all__ = ["WeightQuantizer"]

#: Clipping grid: each candidate range is [quantile(1-p), quantile(p)] per output channel, then shrunk by r.
_PERCENTILES = (1.0, 0.999, 0.99)
_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def _row_mse(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-row mean squared quantization error (no autograd, few temporaries)."""
    q = torch.div(w, scale).round_().add_(zero).clamp_(0, qmax)
    return q.sub_(zero).mul_(scale).sub_(w).square_().mean(dim=1)


class WeightQuantizer(nn.Module):
    """Per-output-channel asymmetric uniform fake quantizer for a weight of shape [out, ...].

    ``calibrate(weight)`` picks each channel's range by a grid search over percentile clipping and shrink
    factors minimising the channel's weight MSE (``minmax=True``: plain channel min/max). ``scale`` is a
    parameter so reconstruction can learn it; ``zero_point`` stays on the integer grid.

    Fitted state is plain tensors on the weight's device: the current ``scale``/``zero_point`` and, per
    bit-width, the ranges fitted so far (``calibrate`` at a bit-width fitted before restores them, so switching
    bits back and forth costs nothing and keeps ranges set by ``set_params``, e.g. the output-aware search).
    ``forget()`` drops them (needed when the weight itself changes).
    """

    kind = "uniform_per_channel"

    def __init__(self, bits: int = 8, minmax: bool = False, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.bits = int(bits)
        self.enabled = True
        self.minmax = minmax
        self.scale = nn.Parameter(torch.ones(1, device=device), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(1, device=device))
        self.calibrated = False
        self._fitted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def active(self) -> bool:
        return self.enabled and self.bits < FLOAT_BITS

    @torch.no_grad()
    def calibrate(self, weight: torch.Tensor) -> None:
        """Choose per-channel scale/zero point for ``weight`` [out, ...] at ``self.bits``."""
        self.calibrated = True
        if self.bits >= FLOAT_BITS:
            return
        cached = self._fitted.get(self.bits)
        if cached is not None and cached[0].shape[0] == weight.shape[0]:
            self.set_params(*cached)
            return
        w = weight.detach().float().reshape(weight.shape[0], -1)
        view = (-1,) + (1,) * (weight.dim() - 1)
        qmax = 2**self.bits - 1
        best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
        best_low = w.amin(dim=1)
        best_high = w.amax(dim=1)
        percentiles = (1.0,) if self.minmax else _PERCENTILES
        shrinks = (1.0,) if self.minmax else _SHRINK
        ordered = w.sort(dim=1).values if len(percentiles) > 1 else w
        last = w.shape[1] - 1
        for p in percentiles:
            if p == 1.0:
                low_p, high_p = w.amin(dim=1), w.amax(dim=1)
            else:
                k = min(int(round((1 - p) * last)), last)
                low_p, high_p = ordered[:, k], ordered[:, last - k]
            for r in shrinks:
                low = torch.minimum(low_p * r, torch.zeros_like(low_p))
                high = torch.maximum(high_p * r, torch.zeros_like(high_p))
                scale = torch.clamp(high - low, min=1e-8) / qmax
                zero = torch.round(-low / scale)
                err = _row_mse(w, scale[:, None], zero[:, None], qmax)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_low = torch.where(better, low, best_low)
                best_high = torch.where(better, high, best_high)
        scale = torch.clamp(best_high - best_low, min=1e-8) / qmax
        zero = torch.round(-best_low / scale)
        self.set_params(scale.reshape(view).to(weight.dtype), zero.reshape(view).to(weight.dtype))
        self.remember_fit()

    def set_params(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Replace the per-channel scale and zero point (shape ``[out, 1, ...]``, zero points integers)."""
        self.scale = nn.Parameter(scale.detach().clone(), requires_grad=False)
        self.zero_point = zero_point.detach().clone()
        self.calibrated = True

    def remember_fit(self) -> None:
        """Keep the current scale/zero point as the fitted state of the current bit-width."""
        self._fitted[self.bits] = (self.scale.detach().clone(), self.zero_point.detach().clone())

    def forget(self) -> None:
        """Drop the fitted state of every bit-width (the next ``calibrate`` searches again)."""
        self._fitted = {}

    def quantize_at(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        """Fake-quantized ``weight`` at ``bits`` (cached range search), leaving this quantizer unchanged."""
        if bits >= FLOAT_BITS:
            return weight
        saved = (self.bits, self.scale, self.zero_point, self.calibrated)
        if bits == self.bits and self.calibrated:
            return fake_quant_uniform(weight, self.scale, self.zero_point, bits)
        try:
            self.bits = bits
            self.calibrate(weight)
            return fake_quant_uniform(weight, self.scale, self.zero_point, bits)
        finally:
            self.bits, self.scale, self.zero_point, self.calibrated = saved

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return weight
        if not self.calibrated:
            self.calibrate(weight)
        return fake_quant_uniform(weight, self.scale, self.zero_point, self.bits)

    def integer_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The integer codes in ``[0, 2^bits - 1]`` (same shape as ``weight``) of the quantized weight."""
        return torch.clamp(torch.round(weight / self.scale) + self.zero_point, 0, 2**self.bits - 1)

    def describe(self) -> dict:
        return {"kind": self.kind, "bits": self.bits if self.active else FLOAT_BITS}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, enabled={self.enabled}"
