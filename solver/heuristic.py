"""Primal heuristics: turn an LP solution (or any start) into a good assignment that meets every budget.

A good incumbent matters twice: it is returned when the time limit stops the exact search, and its objective UB
drives reduced-cost fixing (:mod:`solver.lagrange`), which decides how small the exact search gets.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from operator import mul

from .compile import Group
from .hull import hull
from .numerics import FEAS_RTOL, feasible, fits, usage

__all__ = ["cheapest_start", "greedy_start", "improve", "repair", "round_lp", "two_swap"]

_MAX_COMBOS = 64
#: the scans below look at the clock once per this many groups (a scan of 5000 groups takes ~0.1 s)
_CLOCK_EVERY = 128


def _violation(used: Sequence[float], limits: Sequence[float]) -> float:
    return sum(max(0.0, u - b) / b for u, b in zip(used, limits))


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def repair(
    groups: Sequence[Group],
    choice: list[int],
    limits: Sequence[float],
    max_steps: int = 10_000,
    deadline: float | None = None,
) -> bool:
    """Greedy repair in place: repeatedly take the move with the least sensitivity increase per unit of
    (limit-normalised) violation removed. Returns whether the choice now meets every budget."""
    m = len(limits)
    used = usage(groups, choice, m)
    for _ in range(max_steps):
        if _late(deadline):
            break
        total = _violation(used, limits)
        if feasible(used, limits):
            return True
        best: tuple[float, int, int] | None = None
        for gi, g in enumerate(groups):
            if gi % _CLOCK_EVERY == 0 and gi and _late(deadline):
                return False
            cur = choice[gi]
            cc, cs = g.costs[cur], g.sens[cur]
            base = [used[k] - cc[k] for k in range(m)]
            for o, c in enumerate(g.costs):
                if o == cur:
                    continue
                new = sum(max(0.0, base[k] + c[k] - limits[k]) / limits[k] for k in range(m))
                gain = total - new
                if gain <= 1e-15:
                    continue
                score = (g.sens[o] - cs) / gain
                if best is None or score < best[0]:
                    best = (score, gi, o)
        if best is None:
            return False
        _, gi, o = best
        old = groups[gi].costs[choice[gi]]
        for k in range(m):
            used[k] += groups[gi].costs[o][k] - old[k]
        choice[gi] = o
    return feasible(used, limits)


def improve(
    groups: Sequence[Group],
    choice: list[int],
    limits: Sequence[float],
    max_steps: int = 10_000,
    deadline: float | None = None,
) -> None:
    """1-opt descent in place: while some single change lowers the objective and keeps every budget met, make
    such changes, largest decrease first.

    Each round finds every group's best improving change at the current usage (one pass over all options), then
    applies them in order of decrease while they still fit; rounds repeat until nothing changes (at most
    ``max_steps`` rounds) or ``deadline`` passes."""
    m = len(limits)
    used = usage(groups, choice, m)
    for _ in range(max_steps):
        if _late(deadline):
            return
        moves: list[tuple[float, int, int]] = []
        for gi, g in enumerate(groups):
            if gi % _CLOCK_EVERY == 0 and gi and _late(deadline):
                break  # apply what was found so far
            cur = choice[gi]
            cs, cc = g.sens[cur], g.costs[cur]
            best: tuple[float, int] | None = None
            for o, s in enumerate(g.sens):
                delta = s - cs
                if delta >= 0.0 or (best is not None and delta >= best[0]):
                    continue
                c = g.costs[o]
                if all(fits(used[k] - cc[k] + c[k], limits[k]) for k in range(m)):
                    best = (delta, o)
            if best is not None:
                moves.append((best[0], gi, best[1]))
        if not moves:
            return
        moves.sort()
        changed = False
        for _, gi, o in moves:
            old, new = groups[gi].costs[choice[gi]], groups[gi].costs[o]
            if all(fits(used[k] - old[k] + new[k], limits[k]) for k in range(m)):
                for k in range(m):
                    used[k] += new[k] - old[k]
                choice[gi] = o
                changed = True
        if not changed:
            return


def round_lp(
    groups: Sequence[Group],
    x: Sequence[Sequence[float]],
    limits: Sequence[float],
    lam: Sequence[float],
    deadline: float | None = None,
) -> list[int] | None:
    """Round an LP solution ``x`` (per group, per option) to an assignment meeting every budget, or None.

    Integral groups keep their option. For the few fractional groups (at most one per binding budget at a
    vertex) every combination of their support is tried when there are at most 64; otherwise each takes its
    cheapest support option (by ``lam``-weighted cost). The result is repaired if needed, then improved."""
    m = len(limits)
    if len(x) != len(groups) or any(len(xs) != len(g.sens) for xs, g in zip(x, groups)):
        return None
    choice = [max(range(len(xs)), key=lambda i: (xs[i], -i)) for xs in x]
    frac = [gi for gi, xs in enumerate(x) if max(xs) < 1.0 - 1e-6]
    # a group whose LP values are all ~0 (a solver stopped early returns x = 0) has no support: every option
    # of the group is a candidate then
    supports = [[o for o, v in enumerate(x[gi]) if v > 1e-9] or list(range(len(x[gi]))) for gi in frac]
    n_combos = 1
    for s in supports:
        n_combos *= len(s)
    if frac and n_combos <= _MAX_COMBOS:
        base_used = usage(groups, choice, m)
        best: tuple[float, tuple[int, ...]] | None = None
        for combo in itertools.product(*supports):
            used = list(base_used)
            for gi, o in zip(frac, combo):
                old, new = groups[gi].costs[choice[gi]], groups[gi].costs[o]
                for k in range(m):
                    used[k] += new[k] - old[k]
            if feasible(used, limits):
                obj = sum(groups[gi].sens[o] - groups[gi].sens[choice[gi]] for gi, o in zip(frac, combo))
                if best is None or obj < best[0]:
                    best = (obj, combo)
        if best is not None:
            for gi, o in zip(frac, best[1]):
                choice[gi] = o
            frac = []
    for gi, support in zip(frac, supports):
        choice[gi] = min(support, key=lambda o: (sum(lam[k] * groups[gi].costs[o][k] for k in range(m)), o))
    if not repair(groups, choice, limits, deadline=deadline):
        return None
    improve(groups, choice, limits, deadline=deadline)
    return choice


def greedy_start(
    groups: Sequence[Group],
    limits: Sequence[float],
    deadline: float | None = None,
    weights: Sequence[float] | None = None,
) -> list[int] | None:
    """A fast feasible assignment without any LP: marginal-gain rounding of the Lagrangian relaxation.

    Each option's cost is aggregated over the budgets as ``sum_k weights[k] * c_k`` (default weights
    ``1 / |limit_k|``). Every group starts at its cheapest option (repaired if that breaks a budget); then the
    segments of all groups' lower convex hulls (aggregated cost, sensitivity) are taken steepest-first while every
    budget still fits (a group whose next segment does not fit stops there), and a 1-opt descent follows.
    ``O(S log S)`` for S options plus the descent, which stops at ``deadline``. Returns None only when no
    assignment meeting every budget was found."""
    m = len(limits)
    w = list(weights) if weights is not None else [1.0 / abs(b) if b != 0.0 else 1.0 for b in limits]
    segs: list[tuple[float, int, int, int]] = []
    choice: list[int] = []
    for gi, g in enumerate(groups):
        agg = [sum(map(mul, w, c)) for c in g.costs]
        start, sg = hull(agg, g.sens)
        choice.append(start)
        segs.extend((ds / dc, gi, j, o) for j, (dc, ds, o) in enumerate(sg))
    used = usage(groups, choice, m)
    if not feasible(used, limits):
        if not repair(groups, choice, limits, deadline=deadline):
            return None
        improve(groups, choice, limits, deadline=deadline)
        return choice
    segs.sort()
    step = [0] * len(groups)
    blocked = [False] * len(groups)
    for _, gi, j, o in segs:  # O(S): not cut by the deadline, so the answer is always a real greedy one
        if blocked[gi] or j != step[gi]:
            continue
        old, new = groups[gi].costs[choice[gi]], groups[gi].costs[o]
        if all(fits(used[k] + new[k] - old[k], limits[k]) for k in range(m)):
            for k in range(m):
                used[k] += new[k] - old[k]
            choice[gi] = o
            step[gi] += 1
        else:
            blocked[gi] = True
    improve(groups, choice, limits, deadline=deadline)
    return choice


def cheapest_start(
    groups: Sequence[Group], limits: Sequence[float], deadline: float | None
) -> list[int] | None:
    """Without an LP solution: start from the cheapest options (limit-normalised cost), repair, improve, all
    within ``deadline``. Returns a choice meeting every budget, or None."""
    choice = [
        min(
            range(len(g.sens)),
            key=lambda o, g=g: (sum(c / b for c, b in zip(g.costs[o], limits)), g.sens[o], o),
        )
        for g in groups
    ]
    if not repair(groups, choice, limits, deadline=deadline):
        return None
    improve(groups, choice, limits, deadline=deadline)
    return choice


def two_swap(
    groups: Sequence[Group],
    choice: list[int],
    limits: Sequence[float],
    max_rounds: int = 50,
    deadline: float | None = None,
) -> None:
    """Pair-move descent in place: change two groups at once (typically one up, one down) when that lowers the
    objective and keeps every budget met; after each move, 1-opt. Meant for small reduced problems."""
    m = len(limits)
    for _ in range(max_rounds):
        if _late(deadline):
            return
        used = usage(groups, choice, m)
        slack = [limits[k] + FEAS_RTOL * abs(limits[k]) - used[k] for k in range(m)]
        moves = []
        for gi, g in enumerate(groups):
            cur = choice[gi]
            cs, cc = g.sens[cur], g.costs[cur]
            for o in range(len(g.sens)):
                if o != cur:
                    moves.append((g.sens[o] - cs, gi, o, tuple(g.costs[o][k] - cc[k] for k in range(m))))
        moves.sort()
        best: tuple[float, int, int, int, int] | None = None
        for ds1, g1, o1, dc1 in moves:
            if ds1 >= 0.0:
                break
            for ds2, g2, o2, dc2 in moves:
                total = ds1 + ds2
                if total >= 0.0 or (best is not None and total >= best[0]):
                    break
                if g2 != g1 and all(dc1[k] + dc2[k] <= slack[k] for k in range(m)):
                    best = (total, g1, o1, g2, o2)
                    break
        if best is None:
            return
        _, g1, o1, g2, o2 = best
        choice[g1] = o1
        choice[g2] = o2
        improve(groups, choice, limits, deadline=deadline)
