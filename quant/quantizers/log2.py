"""Log2 quantization of post-softmax attention maps (values in [0, 1]): levels ``s * 2^-q`` plus an exact zero.

Fine resolution near 0, coarse near 1 (the level below ``s`` is ``s/2``). ``s`` is the observed maximum (1 for
softmax outputs). Values below the smallest level round to 0.
"""

from __future__ import annotations

import torch

from .params import Log2Params
from .ste import round_ste

__all__ = ["fit_log2", "log2_fake_quant"]


def log2_fake_quant(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` on the levels ``scale * 2^-q``, ``q`` in ``[0, 2^bits - 2]``, or 0 (``q == 2^bits - 1``)."""
    levels = 2**bits - 1
    ratio = torch.clamp(x / scale, min=1e-30)
    q = torch.clamp(round_ste(-torch.log2(ratio)), 0, levels)
    deq = scale * torch.pow(2.0, -q)
    return torch.where(q >= levels, torch.zeros_like(deq), deq)


def fit_log2(sample: torch.Tensor, bits: int) -> Log2Params:
    """Top level at the sample's maximum (at least 1e-8)."""
    return Log2Params(torch.clamp(sample.max().float(), min=1e-8), int(bits))
