"""Objective scaling shared by the backends: make the MIP solvers' absolute tolerances small relative to the
answer, whatever the range of the sensitivities.

Sensitivities may spread over many decades (issue 13: each layer's multiplied by ``10 ** uniform(-8, 8)``).
Dividing by the largest one made the objective of a good assignment ~1e-5 of the scale, so differences that
mattered at 1e-6 of the objective fell below HiGHS's and CBC's absolute tolerances (~1e-7 .. 1e-6) and both
reported a worse assignment as "optimal". Instead:

- each group's least sensitivity is subtracted (a constant: it goes to the objective offset), so every
  coefficient is a *difference* ``s_go - min_o s_go >= 0`` within its group;
- with an incumbent of (shifted) value ``ub > 0``, the objective is divided by ``ub / 1000``: the incumbent is
  worth 1000 units, so a tolerance of 1e-6 units is 1e-9 of it;
- a coefficient above ``ub`` can never be part of an assignment that beats the incumbent (all coefficients are
  >= 0), so it is clipped to ``1.001 * ub`` (which keeps the optimum, and the coefficients at most ~1000).
Without an incumbent (the LP relaxation) the scale is the largest shifted coefficient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..compile import Group

__all__ = ["ObjectiveScaling", "scale_objective"]

#: the incumbent's scaled objective value
_INCUMBENT_UNITS = 1000.0


@dataclass(frozen=True)
class ObjectiveScaling:
    """``costs[g][o]``: the scaled coefficient of option o of group g; ``scale``: divide a true objective
    difference by it to get scaled units; ``shift``: the constant removed from the objective (true units)."""

    costs: list[list[float]]
    scale: float
    shift: float

    def to_true(self, scaled_value: float) -> float:
        """A scaled objective value (without offset) back in true units."""
        return scaled_value * self.scale + self.shift


def scale_objective(groups: Sequence[Group], incumbent: Sequence[int] | None = None) -> ObjectiveScaling:
    """The scaled objective of ``groups`` (see the module docstring)."""
    lows = [min(g.sens) for g in groups]
    diffs = [[s - lo for s in g.sens] for g, lo in zip(groups, lows)]
    shift = sum(lows)
    ub = None
    if incumbent is not None and len(incumbent) == len(groups):
        ub = sum(d[o] for d, o in zip(diffs, incumbent))
    if ub is not None and ub > 0.0:
        scale = ub / _INCUMBENT_UNITS
        cap = 1.001 * ub
        costs = [[min(v, cap) / scale for v in d] for d in diffs]
        return ObjectiveScaling(costs, scale, shift)
    top = max((v for d in diffs for v in d), default=0.0)
    scale = top if top > 0.0 else 1.0
    return ObjectiveScaling([[v / scale for v in d] for d in diffs], scale, shift)
