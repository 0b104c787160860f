"""QDrop keep masks and the training params of a block's inputs (learned scales, QDrop), as values.

QDrop (Wei et al., 2022): each activation output element is kept quantized with probability ``p`` and otherwise
replaced by the quantizer's float input. Keep masks come from a ``MaskSource``:

- on the CPU, a pool of seeded 0/1 masks is drawn once per block and every mask of an iteration is a window of
  it at a seeded random offset (a view: no random numbers and no conversion per iteration, which were ~15 % of
  an iteration's time);
- on other devices (CUDA), every mask is a fresh draw from the device's RNG (seeded per block by the engine
  inside ``torch.random.fork_rng``): cheap there, and graph-capturable (no host-side offsets).

:func:`training_inputs` turns a layer's input params into training values: a static uniform grid gets a learnable
copy of its scale (LSQ-style straight-through gradients) and, with QDrop, is wrapped in
:class:`~quant.quantizers.training.QDropInput` (a fused forward/backward, ``fake_quant_qdrop``); post-softmax TanQ/
log2 and dynamic inputs keep their params and get QDrop only.
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn

from ..quantizers import AffineParams
from ..quantizers.training import QDropInput

__all__ = ["MaskSource", "TrainingInputs", "keep_mask", "training_inputs"]


def keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Float mask of 0/1 on ``device``, each element 1 with probability ``p``. For ``p = 0.5`` every random byte
    gives 8 fair coins (about 4x faster than comparing uniform floats). Float, not bool: ``torch.lerp``/``mul``
    with a float mask are several times faster on CPU than ``torch.where`` with a bool one."""
    numel = math.prod(shape)
    if p == 0.5 and numel % 8 == 0:
        bits = torch.arange(8, dtype=torch.uint8, device=device)
        rnd = torch.randint(0, 256, (numel // 8, 1), dtype=torch.uint8, generator=generator, device=device)
        return ((rnd >> bits) & 1).view(shape).float()
    return (torch.rand(shape, generator=generator, device=device) < p).float()


class MaskSource:
    """QDrop keep masks (1 = keep quantized, probability ``p``), deterministic given ``seed``.

    CPU: windows of a pool drawn once (grown on demand) at offsets from a seeded ``random.Random``; the pool
    holds at least 4x the largest mask, so windows of consecutive iterations rarely coincide. Other devices:
    ``torch.rand(...) < p`` from the device's default generator (the caller seeds it).
    """

    def __init__(self, p: float, seed: int, device: torch.device) -> None:
        self.p, self.device = float(p), torch.device(device)
        self.pooled = self.device.type == "cpu"
        self._offsets = random.Random(seed)
        self._generator = torch.Generator(device="cpu").manual_seed(seed) if self.pooled else None
        self._pool = torch.empty(0, device=self.device)

    def __call__(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not self.pooled:
            return (torch.rand(shape, device=self.device) < self.p).to(dtype)
        numel = math.prod(shape)
        if self._pool.numel() < 4 * numel:
            size = 8 * ((4 * numel + 4095) // 8)
            self._pool = keep_mask((size,), self.p, self._generator, self.device)
        start = self._offsets.randrange(self._pool.numel() - numel + 1)
        mask = self._pool[start:start + numel].view(shape)
        return mask if mask.dtype == dtype else mask.to(dtype)


class TrainingInputs:
    """Training values of one layer's inputs: ``train`` (with QDrop), ``paused`` (no QDrop, for Fisher
    snapshots), the learnable ``scales``, and ``final()`` (plain params with the learned scales)."""

    def __init__(self, inputs: tuple, masks: MaskSource | None) -> None:
        self.scales: list[nn.Parameter] = []
        learnable = []
        for params in inputs:
            if isinstance(params, AffineParams):
                scale = nn.Parameter(params.scale.detach().clone())
                self.scales.append(scale)
                params = AffineParams(scale, params.zero_point, params.bits, params.granularity)
            learnable.append(params)
        self.paused = tuple(learnable)
        self.train = tuple(QDropInput(p, masks) if p is not None and masks is not None else p for p in learnable)

    def final(self) -> tuple:
        """The inputs as plain params with the learned scales (detached copies)."""
        return tuple(AffineParams(p.scale.detach().clone(), p.zero_point, p.bits, p.granularity)
                     if isinstance(p, AffineParams) else p for p in self.paused)


def training_inputs(inputs: tuple, masks: MaskSource | None) -> TrainingInputs:
    """:class:`TrainingInputs` of a layer's input params; ``masks`` None means no QDrop."""
    return TrainingInputs(inputs, masks)
