"""Params used only while reconstruction trains a block: AdaRound weights and QDrop inputs, as values.

- :class:`SoftRoundedWeight`: AdaRound (Nagel et al., 2020) on a fixed grid ``base``: the rounding direction of
  every weight is learned through ``alpha``::

      h(alpha) = clamp(sigmoid(alpha) (zeta - gamma) + gamma, 0, 1)        (gamma = -0.1, zeta = 1.1)
      codes    = clamp(floor(w / s) + h + z, 0, 2^b - 1)                   (soft, while training)
      codes    = clamp(floor(w / s) + [alpha >= 0] + z, 0, 2^b - 1)        (hard: :func:`hardened`)

  ``alpha`` starts where ``h`` equals the fractional part of ``w / s``. Block-wise grids learn on the zero-padded
  ``[out, n_blocks, block_size]`` view and are cropped back to ``[out, K]``.
- :class:`QDropInput`: QDrop (Wei et al., 2022) around an activation's params: each element of the quantized
  output is kept with probability ``p`` (a keep mask from ``keep(shape, dtype)``), otherwise replaced by the float
  input. For a static uniform grid a fused autograd function computes the output and the straight-through
  derivatives in one pass (:func:`fake_quant_qdrop`).

Learning activation scales needs nothing special: an :class:`AffineParams` whose ``scale`` requires grad gets
straight-through gradients from :func:`quant.quantizers.uniform.fake_quant_uniform`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .params import ActParams, WeightParams
from .weight import block_view

__all__ = ["GAMMA", "ZETA", "QDropInput", "SoftRoundedWeight", "fake_quant_qdrop", "hardened", "soft_rounded"]

GAMMA, ZETA = -0.1, 1.1


@dataclass(frozen=True, eq=False)
class SoftRoundedWeight:
    """AdaRound state of one weight (module doc): ``base`` grid, learnable ``alpha`` and ``floor(w / s)`` (both
    shaped like the weight, or like its block view)."""

    base: WeightParams
    alpha: torch.nn.Parameter
    floor: torch.Tensor
    weight_shape: tuple[int, ...]

    @property
    def bits(self) -> int:
        return self.base.bits

    def h(self) -> torch.Tensor:
        """Soft rounding offsets in [0, 1]."""
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def regularizer(self, beta: float | torch.Tensor) -> torch.Tensor:
        """``sum(1 - |2 h - 1|^beta)``: zero when every offset is exactly 0 or 1."""
        return (1.0 - (2.0 * self.h() - 1.0).abs().pow(beta)).sum()

    def _crop(self, values: torch.Tensor) -> torch.Tensor:
        if self.base.block_size is None:
            return values
        out, k = self.weight_shape
        return values.reshape(out, -1)[:, :k]

    def dequantized(self) -> torch.Tensor:
        """The soft weight ``(codes - z) * s`` (differentiable in ``alpha``)."""
        codes = torch.clamp(self.floor + self.h() + self.base.zero_point, 0, 2**self.base.bits - 1)
        return self._crop((codes - self.base.zero_point) * self.base.scale)


def soft_rounded(weight: torch.Tensor, base: WeightParams) -> SoftRoundedWeight:
    """AdaRound state for ``weight`` on the grid ``base``, starting at the weight itself (clipped to the grid)."""
    w = weight.detach()
    if base.block_size is not None:
        w = block_view(w, base.block_size)
    scaled = w / base.scale
    floor = torch.floor(scaled)
    rest = (scaled - floor).clamp(0.0, 1.0)
    # h(alpha) = rest  <=>  sigmoid(alpha) = (rest - gamma) / (zeta - gamma)
    alpha = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0))
    return SoftRoundedWeight(base.without_codes(), alpha, floor, tuple(weight.shape))


@torch.no_grad()
def hardened(state: SoftRoundedWeight) -> WeightParams:
    """The learned rounding as plain params: ``base`` with ``codes = clamp(floor + [alpha >= 0] + z, 0, qmax)``
    (uint8, shaped like the weight)."""
    base = state.base
    codes = torch.clamp(state.floor + (state.alpha >= 0).to(state.floor.dtype) + base.zero_point, 0,
                        2**base.bits - 1)
    codes = state._crop(codes) if base.block_size is not None else codes
    return WeightParams(base.scale, base.zero_point, base.bits, base.layout, base.block_size,
                        codes.to(torch.uint8).contiguous())


@dataclass(frozen=True, eq=False)
class QDropInput:
    """QDrop around ``inner``: ``keep(shape, dtype)`` returns a float 0/1 mask (1 = keep the quantized value)."""

    inner: ActParams
    keep: Callable[[torch.Size, torch.dtype], torch.Tensor]

    @property
    def bits(self) -> int:
        return self.inner.bits


class _FakeQuantQDrop(torch.autograd.Function):
    """Forward computes the output and the two per-element derivatives, so the backward pass is one product and
    one reduction; selections are ``lerp``/products with float masks (much faster than ``where`` on CPU)."""

    @staticmethod
    def forward(ctx, x, scale, zero, qmax: int, keep):
        v = x / scale
        r = torch.round(v)
        # integer code clamp(r + z, 0, qmax) (float bounds: several times faster than tensor bounds)
        c = (r + zero).clamp_(0, qmax)
        # torch.clamp's backward passes gradients strictly inside the bounds: c (qmax - c) is 0 at both ends and
        # >= 1 inside, so this is the 0/1 mask without comparisons or bool->float conversions (slow on CPU)
        inside = (qmax - c).mul_(c).clamp_(max=1.0)
        qz = c.sub_(zero)
        y = qz * scale
        if keep is not None:
            y = torch.lerp(x, y, keep)  # keep = 1: quantized, 0: the float input
        dyds = None
        if ctx.needs_input_grad[1]:  # d y / d scale = round(x/s) - x/s inside, q - z outside
            dyds = torch.lerp(qz, r.sub_(v), inside)
            if keep is not None:
                dyds.mul_(keep)
        # d y / d x: inside where kept, 1 where bypassed (= 1 - keep (1 - inside))
        pass_x = inside if keep is None else inside.sub_(1.0).mul_(keep).add_(1.0)
        ctx.save_for_backward(pass_x, dyds)
        ctx.scale_shape = scale.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        pass_x, dyds = ctx.saved_tensors
        grad_x = grad * pass_x if ctx.needs_input_grad[0] else None
        grad_s = None
        if dyds is not None:
            if math.prod(ctx.scale_shape) == 1:
                grad_s = torch.dot(grad.reshape(-1), dyds.reshape(-1)).reshape(ctx.scale_shape)
            else:  # grouped scales (per position/head): reduce over the broadcast dimensions
                grad_s = (grad * dyds).sum_to_size(ctx.scale_shape)
        return grad_x, grad_s, None, None, None


def fake_quant_qdrop(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """``fake_quant_uniform(x, scale, zero, bits)`` where ``keep`` is 1 (else ``x``; ``keep`` a float 0/1 mask),
    with the straight-through gradients of ``fake_quant_uniform``."""
    return _FakeQuantQDrop.apply(x, scale, zero, 2**bits - 1, keep)
