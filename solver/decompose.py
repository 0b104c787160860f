"""Split a separable problem into a weight part and an activation part.

LampQ's sensitivity is a sum ``Omega_w(wbits) + Omega_a(abits)`` and most budgets depend on one side only
(``size`` and ``wbits`` on weight bits, ``abits`` on activation bits). When every group's options form a full
grid ``W_g x A_g``, the sensitivity is additive on it (``s(w, a) = s(w, a0) + s(w0, a) - s(w0, a0)`` up to
1e-12 relative) and every budget is one-sided except some *coupling* budgets (e.g. ``bops``, which multiplies
the two), then dropping the coupling budgets leaves two independent, much smaller problems. Their combined
optimum is optimal for the whole problem whenever it also meets the coupling budgets; the caller checks that and
otherwise solves the whole problem.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from .compile import Compiled, Group

__all__ = ["Split", "join", "split_separable"]

_RTOL = 1e-12


@dataclass(frozen=True)
class Split:
    """The two parts and how to map their choices back.

    ``weight``/``activation``: sub-problems whose budgets are the one-sided budgets (indices ``w_budgets`` /
    ``a_budgets`` of the original). ``table[g][i][j]``: original option of group g for weight option i and
    activation option j. ``coupling``: original budget indices left out of both parts.
    """

    weight: Compiled
    activation: Compiled
    w_budgets: tuple[int, ...]
    a_budgets: tuple[int, ...]
    coupling: tuple[int, ...]
    table: tuple[tuple[tuple[int, ...], ...], ...]


def _close(x: float, y: float, scale: float) -> bool:
    return abs(x - y) <= _RTOL * scale


def _grid(g: Group) -> tuple[list[int], list[int], list[list[int]]] | None:
    ws: list[int] = []
    as_: list[int] = []
    for w, a in g.pairs:
        if w not in ws:
            ws.append(w)
        if a not in as_:
            as_.append(a)
    if len(ws) * len(as_) != len(g.pairs):
        return None
    index = {p: i for i, p in enumerate(g.pairs)}
    return ws, as_, [[index[(w, a)] for a in as_] for w in ws]


def split_separable(comp: Compiled, deadline: float | None = None) -> Split | None:
    """The split of ``comp`` (unpruned groups), or None when it is not separable, a part would be trivial, or
    ``deadline`` (a ``time.perf_counter()`` value) passes before the check is done."""
    m = len(comp.limits)
    tables = []
    w_side = [True] * m
    a_side = [True] * m
    for gi, g in enumerate(comp.groups):
        if deadline is not None and gi % 64 == 0 and time.perf_counter() > deadline:
            return None
        grid = _grid(g)
        if grid is None:
            return None
        ws, as_, t = grid
        scale = max(abs(s) for s in g.sens) or 1.0
        s00 = g.sens[t[0][0]]
        for i in range(len(ws)):
            for j in range(len(as_)):
                o = t[i][j]
                if not _close(g.sens[o], g.sens[t[i][0]] + g.sens[t[0][j]] - s00, scale):
                    return None
                for k in range(m):
                    c = g.costs[o][k]
                    ck = max(abs(c), 1.0)
                    if w_side[k] and not _close(c, g.costs[t[i][0]][k], ck):
                        w_side[k] = False
                    if a_side[k] and not _close(c, g.costs[t[0][j]][k], ck):
                        a_side[k] = False
        tables.append(tuple(tuple(row) for row in t))
    w_b = tuple(k for k in range(m) if w_side[k])
    a_b = tuple(k for k in range(m) if a_side[k] and not w_side[k])
    coupling = tuple(k for k in range(m) if not w_side[k] and not a_side[k])
    if not any(len(t) > 1 for t in tables) or not any(len(t[0]) > 1 for t in tables):
        return None
    w_groups = []
    a_groups = []
    for g, t in zip(comp.groups, tables):
        s00 = g.sens[t[0][0]]
        w_groups.append(
            Group(
                g.layers,
                tuple((g.pairs[row[0]][0], 0) for row in t),
                tuple(g.sens[row[0]] for row in t),
                tuple(tuple(g.costs[row[0]][k] for k in w_b) for row in t),
            )
        )
        a_groups.append(
            Group(
                g.layers,
                tuple((0, g.pairs[o][1]) for o in t[0]),
                tuple(g.sens[o] - s00 for o in t[0]),
                tuple(tuple(g.costs[o][k] for k in a_b) for o in t[0]),
            )
        )
    return Split(
        _part(comp, w_b, w_groups),
        _part(comp, a_b, a_groups),
        w_b,
        a_b,
        coupling,
        tuple(tables),
    )


def _part(comp: Compiled, budgets: Sequence[int], groups: list[Group]) -> Compiled:
    min_ach = tuple(sum(min(c[i] for c in g.costs) for g in groups) for i in range(len(budgets)))
    return Compiled(
        tuple(comp.budget_names[k] for k in budgets),
        tuple(comp.limits[k] for k in budgets),
        tuple(groups),
        min_ach,
        sum(len(g.sens) for g in groups),
    )


def join(split: Split, w_choice: Sequence[int], a_choice: Sequence[int]) -> list[int]:
    """Original option per group from the two parts' choices."""
    return [t[i][j] for t, i, j in zip(split.table, w_choice, a_choice)]
