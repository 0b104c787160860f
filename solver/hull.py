"""Lower convex hulls of a group's (cost, sensitivity) points: the LP relaxation of one group on one cost axis."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["hull"]


def hull(costs: Sequence[float], sens: Sequence[float]) -> tuple[int, list[tuple[float, float, int]]]:
    """Lower-left convex hull of (cost, sensitivity) points: the cheapest point (least sensitive among equally
    cheap ones) and the segments towards the least sensitive point, as (d cost > 0, d sensitivity < 0, option),
    in order of increasing slope (steepest descent first)."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], sens[i], i))
    pareto: list[int] = []
    for i in order:
        if not pareto or sens[i] < sens[pareto[-1]]:
            pareto.append(i)
    points: list[int] = []
    for i in pareto:
        while len(points) >= 2:
            a, b = points[-2], points[-1]
            # drop b when it is not below the segment a -> i
            if (sens[b] - sens[a]) * (costs[i] - costs[a]) >= (sens[i] - sens[a]) * (costs[b] - costs[a]):
                points.pop()
            else:
                break
        points.append(i)
    segs = [
        (costs[points[j + 1]] - costs[points[j]], sens[points[j + 1]] - sens[points[j]], points[j + 1])
        for j in range(len(points) - 1)
    ]
    return points[0], segs
