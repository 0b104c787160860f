"""Uniform weight quantizer: asymmetric per output channel (default), symmetric per output channel, or
asymmetric per block of ``block_size`` input elements (MatMulNBits' layout), each with an MSE range search.

Layouts (``scale``/``zero_point`` shapes; codes always in ``[0, 2^b - 1]``, dequantized as ``(q - zp) * scale``):

- per channel (``block_size=None``, ``symmetric=False``): ``[out, 1, ...]``, zp integer in ``[0, 2^b - 1]``;
- symmetric per channel (``symmetric=True``): same shapes, ``zp == 2^(b-1)`` everywhere and
  ``scale = r * max|w| / (2^(b-1) - 1)`` (``r`` from the shrink grid), so the signed code ``q - 2^(b-1)`` is an
  ``int8`` weight with zero point 0 (what onnxruntime's QDQ int8 kernels want);
- block-wise (``block_size=B``, linear weights [out, K] only): the weight is padded with zeros along K to
  ``n_blocks * B`` (``n_blocks = ceil(K / B)``) and viewed as [out, n_blocks, B]; ``[out, n_blocks, 1]`` scales
  and integer zero points; the fake-quantized result is cropped back to K.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import FLOAT_BITS
from .uniform import fake_quant_uniform

__all__ = ["WeightQuantizer", "block_view", "n_blocks"]

#: Clipping grid: each candidate range is [quantile(1-p), quantile(p)] per output channel, then shrunk by r.
_PERCENTILES = (1.0, 0.999, 0.99)
_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
#: "use the quantizer's current setting" (``quantize_at``).
_CURRENT = object()


def _row_mse(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-row mean squared quantization error (no autograd, few temporaries)."""
    q = torch.div(w, scale).round_().add_(zero).clamp_(0, qmax)
    return q.sub_(zero).mul_(scale).sub_(w).square_().mean(dim=1)


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


class WeightQuantizer(nn.Module):
    """Uniform fake quantizer for a weight of shape [out, ...]: per output channel (asymmetric or symmetric) or
    per block of ``block_size`` input elements (asymmetric; [out, K] weights). See the module doc for layouts.

    ``calibrate(weight)`` picks each channel's (block's) range by a grid search over percentile clipping and
    shrink factors minimising its weight MSE (``minmax=True``: plain min/max, or max |w| when symmetric).
    ``scale`` is a parameter so reconstruction can learn it; ``zero_point`` stays on the integer grid.

    Fitted state is plain tensors on the weight's device: the current ``scale``/``zero_point`` and, per layout
    ``(bits, block_size, symmetric)``, the ranges fitted so far (``calibrate`` at a layout fitted before restores
    them, so switching back and forth costs nothing and keeps ranges set by ``set_params``, e.g. the
    output-aware search). ``forget()`` drops them (needed when the weight itself changes).
    """

    kind = "uniform_per_channel"

    def __init__(self, bits: int = 8, minmax: bool = False, device: torch.device | str | None = None,
                 block_size: int | None = None, symmetric: bool = False) -> None:
        super().__init__()
        self.bits = int(bits)
        self.enabled = True
        self.minmax = minmax
        #: None: per output channel; else asymmetric blocks of this many input elements ([out, K] weights).
        self.block_size: int | None = block_size
        #: per-channel symmetric (zero point 2^(bits-1)); ignored in block mode.
        self.symmetric = bool(symmetric)
        self.scale = nn.Parameter(torch.ones(1, device=device), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(1, device=device))
        self.calibrated = False
        self._fitted: dict[tuple[int, int | None, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def active(self) -> bool:
        return self.enabled and self.bits < FLOAT_BITS

    @property
    def layout(self) -> tuple[int, int | None, bool]:
        """Key of the fitted-state cache: ``(bits, block_size, symmetric)``."""
        return (self.bits, self.block_size, self.symmetric and self.block_size is None)

    def _params_shape(self, weight: torch.Tensor) -> tuple[int, ...]:
        if self.block_size is not None:
            return (weight.shape[0], n_blocks(weight.shape[-1], self.block_size), 1)
        return (weight.shape[0],) + (1,) * (weight.dim() - 1)

    @torch.no_grad()
    def calibrate(self, weight: torch.Tensor) -> None:
        """Choose scale/zero point for ``weight`` [out, ...] at ``self.bits`` in the current layout."""
        self.calibrated = True
        if self.bits >= FLOAT_BITS:
            return
        shape = self._params_shape(weight)
        cached = self._fitted.get(self.layout)
        if cached is not None and tuple(cached[0].shape) == shape:
            self.set_params(*cached)
            return
        if self.block_size is not None:
            rows = block_view(weight.detach().float(), self.block_size).reshape(-1, self.block_size)
        else:
            rows = weight.detach().float().reshape(weight.shape[0], -1)
        scale, zero = _search_rows(rows, self.bits, self.minmax, self.symmetric and self.block_size is None)
        self.set_params(scale.reshape(shape).to(weight.dtype), zero.reshape(shape).to(weight.dtype))
        self.remember_fit()

    def set_params(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Replace the scale and zero point (shape ``[out, 1, ...]`` per channel or ``[out, n_blocks, 1]`` in
        block mode; zero points integers)."""
        self.scale = nn.Parameter(scale.detach().clone(), requires_grad=False)
        self.zero_point = zero_point.detach().clone()
        self.calibrated = True

    def remember_fit(self) -> None:
        """Keep the current scale/zero point as the fitted state of the current layout."""
        self._fitted[self.layout] = (self.scale.detach().clone(), self.zero_point.detach().clone())

    def forget(self) -> None:
        """Drop the fitted state of every layout (the next ``calibrate`` searches again)."""
        self._fitted = {}

    def fake_quant(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` fake-quantized with the current scale/zero point (block mode: padded, quantized, cropped)."""
        if self.block_size is None:
            return fake_quant_uniform(weight, self.scale, self.zero_point, self.bits)
        blocks = block_view(weight, self.block_size)
        out = fake_quant_uniform(blocks, self.scale, self.zero_point, self.bits)
        return out.reshape(weight.shape[0], -1)[:, : weight.shape[1]]

    def quantize_at(self, weight: torch.Tensor, bits: int, *, block_size=_CURRENT, symmetric=_CURRENT) -> torch.Tensor:
        """Fake-quantized ``weight`` at ``bits`` (cached range search), leaving this quantizer unchanged.

        block_size / symmetric: the layout to quantize in (default: the current one), e.g. ``block_size=32`` for
        MatMulNBits' blocks or ``symmetric=True`` for int8 QDQ weights."""
        if bits >= FLOAT_BITS:
            return weight
        block = self.block_size if block_size is _CURRENT else block_size
        sym = self.symmetric if symmetric is _CURRENT else bool(symmetric)
        if bits == self.bits and self.calibrated and (block, sym) == (self.block_size, self.symmetric):
            return self.fake_quant(weight)
        saved = (self.bits, self.block_size, self.symmetric, self.scale, self.zero_point, self.calibrated)
        try:
            self.bits, self.block_size, self.symmetric = bits, block, sym
            self.calibrate(weight)
            return self.fake_quant(weight)
        finally:
            self.bits, self.block_size, self.symmetric, self.scale, self.zero_point, self.calibrated = saved

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return weight
        if not self.calibrated:
            self.calibrate(weight)
        return self.fake_quant(weight)

    def integer_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The integer codes in ``[0, 2^bits - 1]`` (same shape as ``weight``) of the quantized weight."""
        if self.block_size is not None:
            return self.block_codes(weight).reshape(weight.shape[0], -1)[:, : weight.shape[1]]
        return torch.clamp(torch.round(weight / self.scale) + self.zero_point, 0, 2**self.bits - 1)

    def block_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Block mode: the codes of the zero-padded weight, [out, n_blocks, block_size] (padding codes are the
        block's zero point, i.e. exactly 0 after dequantization), as MatMulNBits stores them."""
        if self.block_size is None:
            raise ValueError("block_codes needs a block-wise weight quantizer (block_size set)")
        blocks = block_view(weight, self.block_size)
        return torch.clamp(torch.round(blocks / self.scale) + self.zero_point, 0, 2**self.bits - 1)

    def describe(self) -> dict:
        info = {"kind": self.kind, "bits": self.bits if self.active else FLOAT_BITS}
        if self.block_size is not None:
            info["block_size"] = int(self.block_size)
        elif self.symmetric:
            info["symmetric"] = True
        return info

    def extra_repr(self) -> str:
        extra = f", block_size={self.block_size}" if self.block_size else (", symmetric" if self.symmetric else "")
        return f"bits={self.bits}, enabled={self.enabled}{extra}"
