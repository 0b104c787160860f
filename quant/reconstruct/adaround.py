"""AdaRound: learned up/down rounding of weights on a fixed per-channel grid (Nagel et al., 2020).

For a weight ``W`` with quantizer scale ``s``, zero point ``z`` and ``qmax = 2^bits - 1``::

    h(V)   = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)          (rectified sigmoid, gamma=-0.1, zeta=1.1)
    W_soft = s * (clamp(floor(W / s) + h(V) + z, 0, qmax) - z)       (training)
    W_hard = s * (clamp(floor(W / s) + [V >= 0] + z, 0, qmax) - z)   (final: a point of the integer grid)

``V`` starts where ``h(V)`` equals the fractional part of ``W / s`` (so the soft weight starts at ``W`` clipped
to the grid's range). The regulariser ``sum(1 - |2 h - 1|^beta)`` pushes every ``h`` to 0 or 1 while ``beta``
is annealed from 20 to 2 after a warm-up.

``AdaRoundWeight`` replaces a layer's ``weight_quantizer`` while its block is trained (``attach``), and
``detach(hard=True)`` puts the original quantizer back and writes the hard-rounded, dequantized grid values into
``layer.weight``, computed exactly as ``fake_quant_uniform`` does, so ``weight_quantizer(weight) == weight``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modules import QuantLayer
from ..quantizers.weight import block_view

__all__ = ["GAMMA", "ZETA", "AdaRoundWeight", "BetaSchedule", "attach_adaround", "detach_adaround"]

GAMMA, ZETA = -0.1, 1.1


class AdaRoundWeight(nn.Module):
    """Stand-in for a ``WeightQuantizer`` whose rounding direction per weight is learned (``alpha``).

    Block-wise quantizers (``block_size`` set: MatMulNBits forms) learn on the zero-padded block view
    ``[out, n_blocks, block_size]`` and return the weight cropped back to ``[out, K]``."""

    def __init__(self, quantizer: nn.Module, weight: torch.Tensor) -> None:
        super().__init__()
        self.bits = int(quantizer.bits)
        self.register_buffer("scale", quantizer.scale.detach().clone())
        self.register_buffer("zero_point", quantizer.zero_point.detach().clone())
        self.block_size = getattr(quantizer, "block_size", None)
        self.weight_shape = tuple(weight.shape)
        w = weight.detach()
        if self.block_size is not None:
            w = block_view(w, self.block_size)
        scaled = w / self.scale
        self.register_buffer("floor", torch.floor(scaled))
        rest = (scaled - self.floor).clamp(0.0, 1.0)
        # h(alpha) = rest  <=>  sigmoid(alpha) = (rest - gamma) / (zeta - gamma)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0))
        self.soft = True
        self._last_h: torch.Tensor | None = None  # h() of the latest soft forward, reused by ``regularizer``
        self.original = [quantizer]  # a list, so the quantizer is not registered as a submodule twice

    def __getattr__(self, name: str):
        """Other attributes (``active``, ``enabled``, ``calibrated``...) read through to the original quantizer."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("original")
            if original is None:
                raise
            return getattr(original[0], name)

    def h(self) -> torch.Tensor:
        """Soft rounding offsets in [0, 1]."""
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def regularizer(self, beta: float | torch.Tensor) -> torch.Tensor:
        """``sum(1 - |2 h - 1|^beta)``: zero when every offset is exactly 0 or 1. ``beta``: a float or a 0-dim
        tensor on the device. Reuses ``h`` of the latest soft forward pass (same iteration), else recomputes it."""
        h, self._last_h = self._last_h, None
        if h is None:
            h = self.h()
        return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()

    def codes(self, soft: bool) -> torch.Tensor:
        """Integer codes in [0, qmax] (float tensor; soft codes are fractional)."""
        if soft:
            offset = self._last_h = self.h()
        else:
            offset = (self.alpha >= 0).to(self.floor.dtype)
        return torch.clamp(self.floor + offset + self.zero_point, 0, 2**self.bits - 1)

    def _crop(self, values: torch.Tensor) -> torch.Tensor:
        if self.block_size is None:
            return values
        out, k = self.weight_shape
        return values.reshape(out, -1)[:, :k]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self._crop((self.codes(self.soft) - self.zero_point) * self.scale)

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        """Dequantized hard-rounded weight: ``(q - z) * s``, the exact expression of ``fake_quant_uniform``."""
        q = self.codes(soft=False)
        return self._crop((q - self.zero_point) * self.scale)


def attach_adaround(layers: dict[str, QuantLayer]) -> dict[str, AdaRoundWeight]:
    """Give every layer with an active weight quantizer an ``AdaRoundWeight`` (returned by layer name)."""
    attached = {}
    for name, layer in layers.items():
        if not layer.has_weight or not layer.weight_quantizer.active:
            continue
        quantizer = layer.weight_quantizer
        if not quantizer.calibrated:
            quantizer.calibrate(layer.weight)
        ada = AdaRoundWeight(quantizer, layer.weight).to(layer.weight.device)
        layer.weight_quantizer = ada
        attached[name] = ada
    return attached


@torch.no_grad()
def detach_adaround(layers: dict[str, QuantLayer], attached: dict[str, AdaRoundWeight]) -> None:
    """Restore the original quantizers and store the hard-rounded grid values in ``layer.weight``."""
    for name, ada in attached.items():
        layer = layers[name]
        layer.weight.copy_(ada.hard_weight().to(layer.weight.dtype))
        layer.weight_quantizer = ada.original[0]


class BetaSchedule:
    """Regulariser exponent: ``start`` until ``warmup * iters``, then linear decay to ``end`` at ``iters``.

    ``active(it)`` is False during the warm-up (no rounding regularisation yet).
    """

    def __init__(self, iters: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0) -> None:
        self.iters, self.start_it = iters, warmup * iters
        self.start, self.end = start, end

    def active(self, it: int) -> bool:
        return it >= self.start_it

    def __call__(self, it: int) -> float:
        if it < self.start_it:
            return self.start
        rel = (it - self.start_it) / max(self.iters - self.start_it, 1.0)
        return self.end + (self.start - self.end) * max(0.0, 1.0 - rel)
