"""Shared numeric conventions: the feasibility tolerance and small helpers on choices.

A budget is met when ``used <= limit * (1 + FEAS_RTOL)``; the tolerance only absorbs floating-point rounding
of sums (and the MIP solvers' own tolerances, which are set tighter than this).
"""

from __future__ import annotations

from collections.abc import Sequence

from .compile import Group

__all__ = ["FEAS_RTOL", "feasible", "fits", "objective", "usage"]

FEAS_RTOL = 1e-9


def fits(used: float, limit: float) -> bool:
    """Whether a total ``used`` meets ``limit`` up to :data:`FEAS_RTOL`."""
    return used <= limit + FEAS_RTOL * abs(limit)


def usage(groups: Sequence[Group], choice: Sequence[int], m: int) -> list[float]:
    """Per-budget totals of a choice (one option index per group)."""
    used = [0.0] * m
    for g, o in zip(groups, choice):
        c = g.costs[o]
        for k in range(m):
            used[k] += c[k]
    return used


def objective(groups: Sequence[Group], choice: Sequence[int]) -> float:
    """Summed sensitivity of a choice."""
    return sum(g.sens[o] for g, o in zip(groups, choice))


def feasible(used: Sequence[float], limits: Sequence[float]) -> bool:
    return all(fits(u, b) for u, b in zip(used, limits))
