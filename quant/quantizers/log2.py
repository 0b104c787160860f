"""Log2 quantizer for post-softmax attention maps (values in [0, 1])."""

from __future__ import annotations

import torch

from .base import ActivationQuantizer, round_ste

__all__ = ["Log2Quantizer"]


class Log2Quantizer(ActivationQuantizer):
    """Power-of-two levels ``s * 2^-q`` for ``q`` in ``[0, 2^bits - 2]`` plus an exact zero.

    Fine resolution near 0, coarse near 1 (the level below ``s`` is ``s/2``). ``s`` is the observed maximum
    (1 for softmax outputs). Values below the smallest level round to 0.
    """

    fit_params = ("scale",)
    kind = "log2"

    def __init__(self, bits: int = 8) -> None:
        super().__init__(bits)
        self.register_buffer("scale", torch.tensor(1.0))

    def fit(self, sample: torch.Tensor) -> None:
        self.scale = torch.clamp(sample.max(), min=1e-8).to(self.scale)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1  # q in [0, levels-1] are powers of two; q == levels means zero
        ratio = torch.clamp(x / self.scale, min=1e-30)
        q = round_ste(-torch.log2(ratio))
        q = torch.clamp(q, 0, levels)
        deq = self.scale * torch.pow(2.0, -q)
        return torch.where(q >= levels, torch.zeros_like(deq), deq)

    def describe(self) -> dict:
        info = super().describe()
        info["scale"] = float(self.scale)
        return info
