"""Exact dynamic program for a single budget (multiple-choice knapsack with one constraint).

States after deciding the first d groups are pairs (cost so far, sensitivity so far). A state is dropped when
another has lower-or-equal cost and lower-or-equal sensitivity (Pareto filter), when the cheapest completion
exceeds the limit, or when its sensitivity plus a lower bound for the remaining groups exceeds the incumbent.
The lower bound is the LP relaxation of the remaining groups at the remaining capacity: a convex piecewise-linear
function of the capacity, tabulated once per depth from the groups' lower convex hulls (segments sorted by
slope). The incumbent comes from the greedy LP rounding on the same hulls. All of this is exact: no state that
could lead to a strictly better assignment is dropped.

Uses numpy (installed with highspy); :func:`available` says whether it can run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .compile import Group
from .hull import hull
from .numerics import FEAS_RTOL

__all__ = ["DPResult", "SuffixLP", "available", "pareto_fronts", "solve_one_budget"]

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy comes with highspy
    np = None


def available() -> bool:
    """Whether numpy is importable (the DP needs it)."""
    return np is not None


@dataclass
class DPResult:
    """status: ``"optimal"``, ``"infeasible"`` or ``"aborted"`` (state or time limit); choice: option per group."""

    status: str
    choice: list[int] | None = None
    value: float | None = None
    max_states: int = 0


class SuffixLP:
    """LP value of groups ``order[d:]`` as a function of capacity, for any depth d.

    Memory is linear in the number of hull segments: the segments of all groups are sorted by slope once, and the
    cumulative sums of the suffix from depth d are built when depth d is first asked for (each call with a
    deeper d filters the previous suffix further, so a forward sweep over the depths costs O(n * segments) time
    in numpy and O(segments) memory)."""

    def __init__(self, costs: list[list[float]], sens: list[list[float]]):
        n = len(costs)
        self.base_cost = [0.0] * (n + 1)
        self.base_sens = [0.0] * (n + 1)
        seg_group: list[int] = []
        seg_dc: list[float] = []
        seg_ds: list[float] = []
        for d in range(n - 1, -1, -1):
            start, sg = hull(costs[d], sens[d])
            self.base_cost[d] = self.base_cost[d + 1] + costs[d][start]
            self.base_sens[d] = self.base_sens[d + 1] + sens[d][start]
            for dc, ds, _ in sg:
                seg_group.append(d)
                seg_dc.append(dc)
                seg_ds.append(ds)
        group = np.asarray(seg_group, dtype=np.int64)
        dc = np.asarray(seg_dc, dtype=np.float64)
        ds = np.asarray(seg_ds, dtype=np.float64)
        o = np.argsort(ds / dc, kind="stable") if len(dc) else np.zeros(0, dtype=np.int64)
        self._all = (group[o], dc[o], ds[o])
        self._depth = 0
        self._cur = self._all
        self._cum = self._cumsums(self._all)

    @staticmethod
    def _cumsums(segs):
        _, dc, ds = segs
        return np.concatenate(([0.0], np.cumsum(dc))), np.concatenate(([0.0], np.cumsum(ds)))

    def _at(self, d: int):
        if d != self._depth:
            src = self._cur if d > self._depth else self._all
            keep = src[0] >= d
            self._cur = (src[0][keep], src[1][keep], src[2][keep])
            self._cum = self._cumsums(self._cur)
            self._depth = d
        return self._cum

    def value(self, d: int, capacity):
        """Lower bound on the sensitivity of groups d.. given ``capacity`` (array); -inf-safe: +inf if the
        capacity is below their cheapest total."""
        cumc, cums = self._at(d)
        r = capacity - self.base_cost[d]
        r_pos = np.maximum(r, 0.0)
        i = np.searchsorted(cumc, r_pos, side="right") - 1
        nxt = np.minimum(i + 1, len(cumc) - 1)
        seg_c = cumc[nxt] - cumc[i]
        frac = np.where(seg_c > 0, (r_pos - cumc[i]) / np.where(seg_c > 0, seg_c, 1.0), 0.0)
        out = self.base_sens[d] + cums[i] + np.clip(frac, 0.0, 1.0) * (cums[nxt] - cums[i])
        return np.where(r < -FEAS_RTOL * max(1.0, abs(self.base_cost[d])), np.inf, out)


def _greedy(costs: list[list[float]], sens: list[list[float]], limit: float) -> list[int] | None:
    """Greedy LP rounding on the hulls: take segments by increasing slope while they fit."""
    n = len(costs)
    choice = [0] * n
    used = 0.0
    segs = []
    for g in range(n):
        start, sg = hull(costs[g], sens[g])
        choice[g] = start
        used += costs[g][start]
        segs.extend((ds / dc, g, j, dc, o) for j, (dc, ds, o) in enumerate(sg))
    if used > limit + FEAS_RTOL * abs(limit):
        return None
    segs.sort()
    nxt = [0] * n
    blocked = [False] * n
    for _, g, j, dc, o in segs:
        if blocked[g] or j != nxt[g]:
            continue
        if used + dc <= limit:
            used += dc
            choice[g] = o
            nxt[g] += 1
        else:
            blocked[g] = True
    return choice


def solve_one_budget(
    groups: Sequence[Group],
    k: int,
    limit: float,
    *,
    deadline: float | None = None,
    max_states: int = 1_000_000,
    max_total_states: int = 20_000_000,
) -> DPResult:
    """Minimise the summed sensitivity of ``groups`` subject to ``sum cost[k] <= limit`` exactly.

    Budgets other than ``k`` are ignored (the caller checks them). Gives up (``"aborted"``) past ``deadline``
    (a ``time.perf_counter()`` value), when more than ``max_states`` states would be kept at one depth, or when
    the back-pointers of all depths would hold more than ``max_total_states`` states (~16 bytes each)."""
    n = len(groups)
    spread = [max(c[k] for c in g.costs) - min(c[k] for c in g.costs) for g in groups]
    order = sorted(range(n), key=lambda g: (-spread[g], g))
    costs = [[c[k] for c in groups[g].costs] for g in order]
    sens = [list(groups[g].sens) for g in order]
    cap = limit + FEAS_RTOL * abs(limit)
    start = _greedy(costs, sens, limit)
    if start is None:
        return DPResult("infeasible")
    if deadline is not None and time.perf_counter() > deadline:
        return DPResult("aborted")
    ub = sum(sens[d][o] for d, o in enumerate(start))
    tol = 1e-9 * (abs(ub) + sum(max(abs(s) for s in ss) for ss in sens)) + 1e-300
    suffix = SuffixLP(costs, sens)
    min_rest = [0.0] * (n + 1)
    for d in range(n - 1, -1, -1):
        min_rest[d] = min_rest[d + 1] + min(costs[d])
    cost_states = np.zeros(1)
    sens_states = np.zeros(1)
    back: list[tuple] = []
    peak = 1
    total = 0
    for d in range(n):
        co = np.asarray(costs[d])
        so = np.asarray(sens[d])
        m = len(co)
        c2 = (cost_states[:, None] + co[None, :]).ravel()
        s2 = (sens_states[:, None] + so[None, :]).ravel()
        parent = np.repeat(np.arange(len(cost_states), dtype=np.int64), m)
        option = np.tile(np.arange(m, dtype=np.int64), len(cost_states))
        keep = (c2 + min_rest[d + 1] <= cap) & (s2 + suffix.value(d + 1, cap - c2) <= ub + tol)
        c2, s2, parent, option = c2[keep], s2[keep], parent[keep], option[keep]
        o = np.lexsort((s2, c2))
        c2, s2, parent, option = c2[o], s2[o], parent[o], option[o]
        if len(s2) > 1:
            prev = np.concatenate(([math.inf], np.minimum.accumulate(s2)[:-1]))
            keep = s2 < prev
            c2, s2, parent, option = c2[keep], s2[keep], parent[keep], option[keep]
        if len(s2) == 0:  # only the incumbent reaches the bound (pruned with tol): it is optimal
            choice = [0] * n
            for dd, opt in enumerate(start):
                choice[order[dd]] = opt
            return DPResult("optimal", choice, ub, peak)
        peak = max(peak, len(s2))
        total += len(s2)
        if (
            len(s2) > max_states
            or total > max_total_states
            or (deadline is not None and time.perf_counter() > deadline)
        ):
            return DPResult("aborted", max_states=peak)
        back.append((parent, option))
        cost_states, sens_states = c2, s2
    i = int(np.argmin(sens_states))
    value = float(sens_states[i])
    if value > ub:  # cannot happen (the incumbent path survives), kept for safety
        i = -1
    choice = [0] * n
    if i < 0:
        for dd, opt in enumerate(start):
            choice[order[dd]] = opt
        return DPResult("optimal", choice, ub, peak)
    for d in range(n - 1, -1, -1):
        parent, option = back[d]
        choice[order[d]] = int(option[i])
        i = int(parent[i])
    return DPResult("optimal", choice, sum(groups[g].sens[o] for g, o in enumerate(choice)), peak)


def pareto_fronts(
    costs: list[list[float]],
    sens: list[list[float]],
    cap: float,
    bound: SuffixLP,
    ceiling: float,
    deadline: float | None = None,
) -> list | None:
    """Pareto fronts of (cost, sensitivity) after each prefix of the groups: ``fronts[d]`` holds the states of
    groups ``0..d-1`` as two arrays sorted by cost (sensitivity strictly decreasing), keeping only states that
    fit ``cap`` with the cheapest completion and whose sensitivity plus ``bound`` (LP of the remaining groups)
    stays within ``ceiling``. None when ``deadline`` passes first."""
    cost_states = np.zeros(1)
    sens_states = np.zeros(1)
    fronts = [(cost_states, sens_states)]
    for d in range(len(costs)):
        if deadline is not None and time.perf_counter() > deadline:
            return None
        c2 = (cost_states[:, None] + np.asarray(costs[d])[None, :]).ravel()
        s2 = (sens_states[:, None] + np.asarray(sens[d])[None, :]).ravel()
        keep = s2 + bound.value(d + 1, cap - c2) <= ceiling
        c2, s2 = c2[keep], s2[keep]
        o = np.lexsort((s2, c2))
        c2, s2 = c2[o], s2[o]
        if len(s2) > 1:
            prev = np.concatenate(([math.inf], np.minimum.accumulate(s2)[:-1]))
            keep = s2 < prev
            c2, s2 = c2[keep], s2[keep]
        cost_states, sens_states = c2, s2
        fronts.append((cost_states, sens_states))
    return fronts
