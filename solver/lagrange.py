"""Lagrangian bounds and reduced-cost fixing for the multiple-choice knapsack.

For multipliers ``lam >= 0`` (objective units per cost unit, one per budget),
``L(lam) = sum_g min_o (s_go + lam . c_go) - lam . B`` is a lower bound on the optimum, and any assignment x
that meets the budgets satisfies ``obj(x) >= L(lam) + sum_g rc_g(x_g)`` with reduced costs
``rc_go = s_go + lam . c_go - min_o' (s_go' + lam . c_go')``. So an option whose reduced cost exceeds
``UB - L(lam)`` (UB: objective of any feasible assignment) is in no assignment better than UB and can be dropped.
This holds for *any* ``lam >= 0``, so duals computed by an LP solver (up to its tolerances) are only a good
guess: the bound itself is evaluated here, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from .compile import Group

__all__ = ["fix_by_reduced_cost", "lagrangian"]


def lagrangian(
    groups: Sequence[Group], limits: Sequence[float], lam: Sequence[float]
) -> tuple[float, list[list[float]]]:
    """Return ``(L(lam), reduced costs per group and option)``."""
    m = len(limits)
    active = [k for k in range(m) if lam[k] > 0.0]
    total = -sum(lam[k] * limits[k] for k in active)
    rcs: list[list[float]] = []
    for g in groups:
        if active:
            vals = [s + sum(lam[k] * c[k] for k in active) for s, c in zip(g.sens, g.costs)]
        else:
            vals = list(g.sens)
        low = min(vals)
        total += low
        rcs.append([v - low for v in vals])
    return total, rcs


def fix_by_reduced_cost(rcs: Sequence[Sequence[float]], slack: float) -> list[list[int]]:
    """Indices of the options that may still be in an assignment better than UB, where ``slack = UB - L``
    plus a rounding allowance: options with ``rc <= slack`` stay."""
    return [[i for i, r in enumerate(rc) if r <= slack] for rc in rcs]
