"""TanQ (DopQ-ViT): tangent companding quantizer for post-softmax attention maps.

Compander ``y = tan(a (x - 1/2)) / tan(a / 2)`` maps [0, 1] onto [-1, 1] with the largest slope at both ends;
``y`` is quantized uniformly to ``2^bits`` levels (both ends exact), and expanded back with
``x = 1/2 + atan(y tan(a/2)) / a``. ``a`` in (0, pi) is searched per layer on calibration data: a -> 0 gives a
uniform quantizer, a -> pi concentrates levels near 0 and 1.
"""

from __future__ import annotations

import math

import torch

from .base import ActivationQuantizer, round_ste

__all__ = ["TanQuantizer", "tanq_fake_quant"]

_A_GRID = tuple(0.05 + i * (math.pi - 0.06) / 47 for i in range(48))


def tanq_fake_quant(x: torch.Tensor, a: float, bits: int) -> torch.Tensor:
    """Compand, quantize uniformly to ``2^bits`` levels on [-1, 1], expand. ``x`` in [0, 1] (clamped)."""
    t = math.tan(a / 2)
    x = torch.clamp(x, 0.0, 1.0)
    y = torch.tan(a * (x - 0.5)) / t
    step = 2.0 / (2**bits - 1)
    yq = torch.clamp(round_ste((y + 1.0) / step) * step - 1.0, -1.0, 1.0)
    return 0.5 + torch.atan(yq * t) / a


class TanQuantizer(ActivationQuantizer):
    """TanQ fake quantizer; ``fit`` searches ``a`` on a grid minimising the MSE on the calibration sample."""

    fit_params = ("a",)
    kind = "tanq"

    def __init__(self, bits: int = 8, a: float = 2.0) -> None:
        super().__init__(bits)
        self.register_buffer("a", torch.tensor(float(a)))

    @torch.no_grad()
    def fit(self, sample: torch.Tensor) -> None:
        sample = torch.clamp(sample.float(), 0.0, 1.0)
        best = (float("inf"), float(self.a))
        for a in _A_GRID:
            err = (tanq_fake_quant(sample, a, self.bits) - sample).pow(2).mean().item()
            if err < best[0]:
                best = (err, a)
        self.a = torch.tensor(best[1])

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return tanq_fake_quant(x, float(self.a), self.bits)

    def describe(self) -> dict:
        info = super().describe()
        info["a"] = float(self.a)
        return info
