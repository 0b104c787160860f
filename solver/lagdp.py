"""Lagrangian dynamic program: bounds, exact option fixing and incumbents for several binding budgets.

Keep one budget k exact and move the others into the objective with the LP multipliers ``lam``:
``s'_go = s_go + sum_{j != k} lam_j c_go,j``. For any assignment x meeting every budget,
``obj(x) >= sum_g s'_g(x_g) - sum_{j != k} lam_j B_j``, and the right-hand side, minimised over assignments that
meet budget k only, is a single-budget problem solved exactly by dynamic programming. This bound is at least the
LP bound and usually much closer to the optimum, because it respects the integrality of budget k.

Fixing: with forward Pareto fronts (groups before g) and backward fronts (groups after g), the best value of
that single-budget problem *with group g forced to option o* is ``s'_go + min (f.S + b.S)`` over front states
with ``f.C + c_go,k + b.C <= B_k``; if it exceeds the incumbent, option o cannot be in a better assignment and is
dropped. Fronts only keep states that can still beat the incumbent, which does not change any decision.

Incumbents: the single-budget optimum itself, repaired for the other budgets and improved greedily.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from . import dp
from .compile import Group
from .heuristic import improve, repair, two_swap
from .lagrange import fix_by_reduced_cost
from .numerics import FEAS_RTOL, objective

__all__ = ["dp_fix", "dp_incumbent", "lagrangian_dp_stage", "lagrangian_groups"]


def lagrangian_groups(groups: Sequence[Group], lam: Sequence[float], k: int) -> tuple[list[Group], float]:
    """Groups with ``s' = s + sum_{j != k} lam_j c_j`` and the constant ``sum_{j != k} lam_j`` (times the
    limits, applied by the caller)."""
    others = [j for j in range(len(lam)) if j != k and lam[j] > 0.0]
    return [
        Group(
            g.layers,
            g.pairs,
            tuple(s + sum(lam[j] * c[j] for j in others) for s, c in zip(g.sens, g.costs)),
            g.costs,
            g.ids,
        )
        for g in groups
    ]


def _penalty(lam: Sequence[float], limits: Sequence[float], k: int) -> float:
    return sum(lam[j] * limits[j] for j in range(len(lam)) if j != k and lam[j] > 0.0)


def dp_fix(
    groups: Sequence[Group],
    limits: Sequence[float],
    lam: Sequence[float],
    k: int,
    upper: float,
    deadline: float | None = None,
) -> tuple[list[list[int]], float] | None:
    """Options of each group that may still be in an assignment with objective <= ``upper``, and the
    Lagrangian bound (keeping budget k). Returns ``(keep, bound)``; ``keep[g]`` lists option indices.
    None when ``deadline`` passes first."""
    n = len(groups)
    lgroups = lagrangian_groups(groups, lam, k)
    penalty = _penalty(lam, limits, k)
    costs = [[c[k] for c in g.costs] for g in groups]
    sens = [list(g.sens) for g in lgroups]
    cap = limits[k] + FEAS_RTOL * abs(limits[k])
    tol = 1e-9 * (abs(upper) + penalty + sum(max(abs(s) for s in ss) for ss in sens)) + 1e-12
    ceiling = upper + penalty + tol
    forward = dp.pareto_fronts(costs, sens, cap, dp.SuffixLP(costs, sens), ceiling, deadline)
    if forward is None:
        return None
    backward = dp.pareto_fronts(
        costs[::-1], sens[::-1], cap, dp.SuffixLP(costs[::-1], sens[::-1]), ceiling, deadline
    )
    if backward is None:
        return None
    np = dp.np
    keep: list[list[int]] = []
    best = math.inf
    for d in range(n):
        f_cost, f_sens = forward[d]
        b_cost, b_sens = backward[n - d - 1]
        kept = []
        if len(f_cost) and len(b_cost):
            for o, (c, s) in enumerate(zip(costs[d], sens[d])):
                idx = np.searchsorted(b_cost, cap - c - f_cost, side="right") - 1
                ok = idx >= 0
                if not ok.any():
                    continue
                value = s + float(np.min(f_sens[ok] + b_sens[idx[ok]]))
                best = min(best, value)
                if value <= ceiling:
                    kept.append(o)
        keep.append(kept)
    return keep, best - penalty


def dp_incumbent(
    groups: Sequence[Group], limits: Sequence[float], lam: Sequence[float], k: int, deadline: float | None
) -> list[int] | None:
    """The single-budget optimum of the Lagrangian problem, repaired for the other budgets and improved."""
    lgroups = lagrangian_groups(groups, lam, k)
    res = dp.solve_one_budget(lgroups, k, limits[k], deadline=deadline)
    if res.status != "optimal" or res.choice is None:
        return None
    choice = list(res.choice)
    if not repair(groups, choice, limits, deadline=deadline):
        return None
    improve(groups, choice, limits, deadline=deadline)
    return choice


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def lagrangian_dp_stage(
    fgroups: Sequence[Group],
    rhs: Sequence[float],
    lam: Sequence[float],
    binding: Sequence[int],
    incumbent: list[int],
    inc_value: float,
    rcs: Sequence[Sequence[float]],
    lower: float,
    tol: float,
    deadline: float | None,
) -> tuple[list[int], float, list[list[int]], float]:
    """Several budgets bind: better incumbents and exact option fixing from the Lagrangian dynamic program
    (:mod:`solver.lagdp`), one kept budget at a time. Returns (incumbent, its value, options kept per group,
    the best Lagrangian-DP bound)."""
    order = sorted(binding, key=lambda k: -lam[k] * rhs[k])
    keep = fix_by_reduced_cost(rcs, inc_value - lower + tol)

    def local_search(
        keep: list[list[int]], incumbent: list[int], inc_value: float
    ) -> tuple[list[int], float]:
        sub = [g.subset(kk) for g, kk in zip(fgroups, keep)]
        local = [kk.index(o) for kk, o in zip(keep, incumbent)]
        two_swap(sub, local, rhs, deadline=deadline)
        full = [kk[o] for kk, o in zip(keep, local)]
        value = objective(fgroups, full)
        return (full, value) if value < inc_value else (incumbent, inc_value)

    for k in order:
        if _late(deadline):
            break
        cand = dp_incumbent([g.subset(kk) for g, kk in zip(fgroups, keep)], rhs, lam, k, deadline)
        if cand is not None:
            full = [kk[o] for kk, o in zip(keep, cand)]
            value = objective(fgroups, full)
            if value < inc_value:
                incumbent, inc_value = full, value
    incumbent, inc_value = local_search(keep, incumbent, inc_value)
    keep = fix_by_reduced_cost(rcs, inc_value - lower + tol)
    bound = float("-inf")
    for _ in range(3):
        changed = False
        for k in order:
            if _late(deadline):
                break
            fixed = dp_fix([g.subset(kk) for g, kk in zip(fgroups, keep)], rhs, lam, k, inc_value, deadline)
            if fixed is None:
                break
            kept, b = fixed
            bound = max(bound, b)
            new = []
            for kk, kp, o in zip(keep, kept, incumbent):
                nk = [kk[i] for i in kp]
                if o not in nk:  # the incumbent always qualifies; guard against rounding
                    nk = sorted([*nk, o])
                changed = changed or len(nk) != len(kk)
                new.append(nk)
            keep = new
        better, better_value = local_search(keep, incumbent, inc_value)
        if better_value < inc_value:
            incumbent, inc_value, changed = better, better_value, True
        if not changed:
            break
    return incumbent, inc_value, keep, bound
