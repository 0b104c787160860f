"""Exact depth-first branch and bound for small reduced problems.

After reduced-cost fixing (:mod:`solver.lagrange`) the remaining problem is often tiny; enumerating it here is
cheaper than starting a MIP solver. The bound at a node is ``L(lam) + sum of the reduced costs fixed so far``
(valid for any ``lam >= 0``); nodes that cannot meet a budget even with the cheapest options for the remaining
groups are cut. The search gives up after ``node_limit`` nodes and reports that, so the caller can hand the
problem to a MIP solver instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from .compile import Group
from .numerics import fits

__all__ = ["branch_and_bound"]


def branch_and_bound(
    groups: Sequence[Group],
    rcs: Sequence[Sequence[float]],
    rhs: Sequence[float],
    bound: float,
    incumbent: list[int],
    incumbent_value: float,
    tol: float,
    node_limit: int = 20_000,
) -> tuple[list[int], float, bool, int]:
    """Return ``(best choice, its objective, finished, nodes)``; ``finished`` means proven optimal.

    ``groups``/``rcs``: the free groups and their options' reduced costs; ``bound``: ``L(lam)`` for these
    groups (constants excluded, like ``incumbent_value``); ``rhs``: what the budgets leave for them.
    """
    m = len(rhs)
    n = len(groups)
    order = sorted(range(n), key=lambda gi: -len(groups[gi].sens))
    # cheapest possible cost per budget for the groups after position d in the order
    rest_min = [[0.0] * m for _ in range(n + 1)]
    for d in range(n - 1, -1, -1):
        g = groups[order[d]]
        for k in range(m):
            rest_min[d][k] = rest_min[d + 1][k] + min(c[k] for c in g.costs)
    best = list(incumbent)
    best_value = incumbent_value
    choice = [0] * n
    used = [0.0] * m
    nodes = 0
    # explicit stack of (depth, option index to try next, rc sum, sens sum)
    options = [sorted(range(len(groups[gi].sens)), key=lambda o, gi=gi: (rcs[gi][o], o)) for gi in order]
    stack: list[list[float]] = [[0, 0, 0.0, 0.0]]
    while stack:
        frame = stack[-1]
        d, i, rc_sum, sens_sum = int(frame[0]), int(frame[1]), frame[2], frame[3]
        if i > 0:  # undo the option tried last at this depth
            c = groups[order[d]].costs[options[d][i - 1]]
            for k in range(m):
                used[k] -= c[k]
        if i >= len(options[d]):
            stack.pop()
            continue
        frame[1] = i + 1
        gi = order[d]
        o = options[d][i]
        g = groups[gi]
        r = rc_sum + rcs[gi][o]
        c = g.costs[o]
        for k in range(m):
            used[k] += c[k]
        nodes += 1
        if nodes > node_limit:
            return best, best_value, False, nodes
        if bound + r > best_value + tol:
            # options are sorted by reduced cost: the later ones at this depth are no better
            for k in range(m):
                used[k] -= c[k]
            stack.pop()
            continue
        if not all(fits(used[k] + rest_min[d + 1][k], rhs[k]) for k in range(m)):
            continue
        s = sens_sum + g.sens[o]
        choice[d] = o
        if d + 1 == n:
            if s < best_value:
                best_value = s
                best = [0] * n
                for dd in range(n):
                    best[order[dd]] = choice[dd]
            continue
        stack.append([d + 1, 0, r, s])
    return best, best_value, True, nodes
