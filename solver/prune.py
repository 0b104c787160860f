"""Exact candidate pruning by dominance.

An option is dropped when another option of the same group has sensitivity <= and every budget cost <=
(identical options: the first one is kept). Some optimal assignment never uses a dropped option, so the optimum
is unchanged. Costs that no budget names do not count. LP (convex-hull) dominance is *not* applied here: it is not
exact for the integer problem.
"""

from __future__ import annotations

import time

from .compile import Compiled, Group

__all__ = ["prune_dominated", "prune_group"]


def prune_group(group: Group) -> Group:
    """The group without its dominated options (kept options stay in their original order)."""
    n = len(group.sens)
    if n == 1:
        return group
    costs = group.costs
    m = len(costs[0])
    order = sorted(range(n), key=lambda i: (group.sens[i], costs[i], i))
    kept: list[tuple[float, ...]] = []
    keep: list[int] = []
    lows = [float("inf")] * m  # per budget, the smallest cost among kept options
    for i in order:
        ci = costs[i]
        # cheaper than every kept option in some budget: nothing kept can dominate it
        dominated = False
        if not any(ci[k] < lows[k] for k in range(m)) and kept:
            for ck in kept:
                for a, b in zip(ck, ci):
                    if a > b:
                        break
                else:
                    dominated = True
                    break
        if not dominated:
            kept.append(ci)
            keep.append(i)
            for k in range(m):
                lows[k] = min(lows[k], ci[k])
    if len(keep) == n:
        return group
    keep.sort()
    return group.subset(keep)


def prune_dominated(compiled: Compiled, deadline: float | None = None) -> Compiled:
    """Apply :func:`prune_group` to every group; groups reached after ``deadline`` (a ``time.perf_counter()``
    value) are left as they are (pruning is only a speed-up)."""
    groups = []
    for i, g in enumerate(compiled.groups):
        if deadline is not None and i % 64 == 0 and time.perf_counter() > deadline:
            groups.extend(compiled.groups[i:])
            break
        groups.append(prune_group(g))
    return compiled.with_groups(tuple(groups))
