"""AdaRound's schedule: the rounding regulariser's exponent ``beta`` over a block's iterations.

The rounding itself is a value, :class:`quant.quantizers.training.SoftRoundedWeight` (learned offsets ``alpha`` on
the table entry's fixed grid), hardened into plain :class:`~quant.quantizers.WeightParams` with learned ``codes`` when
the block is done. The regulariser ``sum(1 - |2 h - 1|^beta)`` pushes every offset ``h`` to 0 or 1 while ``beta`` is
annealed from 20 to 2 after a warm-up.
"""

from __future__ import annotations

__all__ = ["BetaSchedule"]


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
