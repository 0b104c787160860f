"""Compile a validated :class:`Problem` into the internal table the algorithms work on.

Tie groups become one *group* whose options are the pairs common to all its layers (sensitivities and costs
summed over the layers); a fixed layer (or a tie group with a fixed member) keeps only its fixed pair. Costs are
stored as tuples in budget order; a cost a layer does not give counts as 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from .problem import Layer, Problem

__all__ = ["Compiled", "Group", "compile_problem"]


@dataclass(frozen=True)
class Group:
    """Layers that take one common choice, and its options (parallel tuples, one entry per option).

    ``ids``: each option's index in the group it was cut from (see :meth:`subset`); None means 0, 1, 2, ...
    """

    layers: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    sens: tuple[float, ...]
    costs: tuple[tuple[float, ...], ...]
    ids: tuple[int, ...] | None = None

    def id(self, option: int) -> int:
        """Index of ``option`` in the original (unsubsetted) group."""
        return option if self.ids is None else self.ids[option]

    def subset(self, keep: list[int]) -> Group:
        """The same group with only the options at indices ``keep`` (in that order); ``ids`` track origins."""
        return Group(
            self.layers,
            tuple(self.pairs[i] for i in keep),
            tuple(self.sens[i] for i in keep),
            tuple(self.costs[i] for i in keep),
            tuple(self.id(i) for i in keep),
        )


@dataclass(frozen=True)
class Compiled:
    """The problem as groups x options, budget names in order, and per-budget minimum achievable totals."""

    budget_names: tuple[str, ...]
    limits: tuple[float, ...]
    groups: tuple[Group, ...]
    min_achievable: tuple[float, ...]
    n_candidates: int

    def with_groups(self, groups: tuple[Group, ...]) -> Compiled:
        return Compiled(self.budget_names, self.limits, groups, self.min_achievable, self.n_candidates)

    def with_limits(self, limits: tuple[float, ...]) -> Compiled:
        return Compiled(self.budget_names, limits, self.groups, self.min_achievable, self.n_candidates)


def _layer_table(
    layer: Layer, names: tuple[str, ...]
) -> dict[tuple[int, int], tuple[float, tuple[float, ...]]]:
    return {
        (int(c.wbits), int(c.abits)): (float(c.sensitivity), tuple(float(c.costs.get(k, 0.0)) for k in names))
        for c in layer.candidates
    }


def _single(layer: Layer, names: tuple[str, ...]) -> Group:
    """Group of one untied layer (the common case, kept fast)."""
    cands = layer.candidates
    if layer.fixed is not None:
        fixed = (int(layer.fixed[0]), int(layer.fixed[1]))
        cands = [c for c in cands if (c.wbits, c.abits) == fixed]
    pairs = tuple((int(c.wbits), int(c.abits)) for c in cands)
    sens = tuple(float(c.sensitivity) for c in cands)
    zeros = (0.0,) * len(names)
    costs = tuple(tuple(map(float, map(c.costs.get, names, zeros))) for c in cands)
    return Group((layer.name,), pairs, sens, costs)


def _tied(layers: list[Layer], names: tuple[str, ...]) -> Group:
    tables = [_layer_table(layer, names) for layer in layers]
    fixed = next((tuple(layer.fixed) for layer in layers if layer.fixed is not None), None)
    pairs = [(int(c.wbits), int(c.abits)) for c in layers[0].candidates]
    pairs = [p for p in pairs if all(p in t for t in tables) and (fixed is None or p == fixed)]
    sens = tuple(sum(t[p][0] for t in tables) for p in pairs)
    costs = tuple(tuple(sum(t[p][1][k] for t in tables) for k in range(len(names))) for p in pairs)
    return Group(tuple(layer.name for layer in layers), tuple(pairs), sens, costs)


def compile_problem(problem: Problem) -> Compiled:
    """Build the group table; ``problem`` must already have passed :func:`solver.validate.check_problem`."""
    names = tuple(problem.budgets)
    limits = tuple(float(problem.budgets[k]) for k in names)
    members: dict[str, list[Layer]] = {}
    order: list[tuple[str | None, Layer]] = []
    for layer in problem.layers:
        if layer.tie is None:
            order.append((None, layer))
        else:
            if layer.tie not in members:
                members[layer.tie] = []
                order.append((layer.tie, layer))
            members[layer.tie].append(layer)
    groups = tuple(
        _single(first, names) if tie is None else _tied(members[tie], names) for tie, first in order
    )
    m = len(names)
    min_ach = tuple(sum(min(c[k] for c in g.costs) for g in groups) for k in range(m))
    n_cand = sum(len(layer.candidates) for layer in problem.layers)
    return Compiled(names, limits, groups, min_ach, n_cand)
