"""Shared pieces of every fake quantizer: straight-through rounding and calibration sampling.

An activation quantizer lives in one of three states:
- disabled (``enabled=False`` or ``bits >= 16``): identity, so a wrapped model reproduces the float model;
- observing (``observing=True``): identity, and a bounded random sample of the values seen is kept so that the
  range can be (re)searched for any bit-width later without another pass over the calibration data;
- quantizing: fake quantization (quantize then dequantize, float in and float out).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FLOAT_BITS", "ActivationQuantizer", "round_ste"]

#: Bit-width that means "keep float" (no quantization).
FLOAT_BITS = 16


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with a straight-through gradient (d round(x)/dx := 1)."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return x.round()
    return (x.round() - x).detach() + x


class ActivationQuantizer(nn.Module):
    """Base class of activation quantizers: bit-width, enable switch and a calibration sample.

    Subclasses implement ``quantize(x)`` (fake quantization of a float tensor of any shape) and
    ``fit(sample)`` (choose parameters for ``self.bits`` from a 1-D float sample).
    """

    kind = "base"
    #: Names of the parameters/buffers that ``fit`` sets (cached per bit-width by ``set_bits``).
    fit_params: tuple[str, ...] = ()

    def __init__(self, bits: int = 8, sample_size: int = 1 << 16, device: torch.device | str | None = None) -> None:
        """device: where the buffers start (None: the default device); they follow ``.to()`` afterwards."""
        super().__init__()
        self.bits = int(bits)
        self.enabled = True
        self.observing = False
        self.sample_size = int(sample_size)
        self.register_buffer("sample", torch.empty(0, device=device), persistent=False)
        self.register_buffer("observed_min", torch.tensor(float("inf"), device=device), persistent=False)
        self.register_buffer("observed_max", torch.tensor(float("-inf"), device=device), persistent=False)
        self.calibrated = False
        self._fitted: dict[int, dict[str, torch.Tensor]] = {}

    # ---- calibration ---------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Record running min/max and a bounded uniform random sample of ``x``'s values."""
        flat = x.detach().reshape(-1).float()
        if flat.numel() == 0:
            return
        self.observed_min = torch.minimum(self.observed_min, flat.min())
        self.observed_max = torch.maximum(self.observed_max, flat.max())
        per_batch = max(self.sample_size // 8, 1)
        if flat.numel() > per_batch:
            idx = torch.randint(0, flat.numel(), (per_batch,), device=flat.device)
            flat = flat[idx]
        merged = torch.cat([self.sample.to(flat.device), flat])
        if merged.numel() > self.sample_size:
            keep = torch.randperm(merged.numel(), device=merged.device)[: self.sample_size]
            merged = merged[keep]
        self.sample = merged

    def calibration_sample(self) -> torch.Tensor:
        """The observed values (1-D) with the exact observed min and max included."""
        if self.sample.numel() == 0:
            raise RuntimeError(f"{type(self).__name__} has observed no data; run calibration first")
        extremes = torch.stack([self.observed_min, self.observed_max]).to(self.sample.device)
        return torch.cat([self.sample, extremes])

    def finalize(self) -> None:
        """Fit parameters for the current bit-width from the observed sample."""
        self._fitted = {}
        if self.bits < FLOAT_BITS:
            self._fit_cached(self.bits)
        self.calibrated = True

    def _fit_cached(self, bits: int) -> None:
        cached = self._fitted.get(bits)
        if cached is None:
            self.fit(self.calibration_sample())
            self._fitted[bits] = {name: getattr(self, name).detach().clone() for name in self.fit_params}
            return
        with torch.no_grad():
            for name, value in cached.items():
                getattr(self, name).data = value.clone()

    def set_bits(self, bits: int) -> None:
        """Change the bit-width and refit from the stored sample (no new pass over the data).

        Fitted parameters are cached per bit-width, so switching back and forth costs nothing.
        """
        self.bits = int(bits)
        if self.calibrated and self.sample.numel() > 0 and self.bits < FLOAT_BITS:
            self._fit_cached(self.bits)

    def quantize_at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        """Fake-quantize ``x`` as this quantizer would at ``bits``, leaving its current bit-width unchanged."""
        if bits >= FLOAT_BITS:
            return x
        current = self.bits
        try:
            self.set_bits(bits)
            return self.quantize(x)
        finally:
            self.set_bits(current)

    def fit(self, sample: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def quantize(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain-dict description (kind, bits, parameters) for reports and the quantization map."""
        return {"kind": self.kind, "bits": self.bits if self.active else FLOAT_BITS}

    @property
    def active(self) -> bool:
        return self.enabled and self.bits < FLOAT_BITS and not self.observing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not self.active:
            return x
        return self.quantize(x)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, enabled={self.enabled}"
