"""The private input validator: every broken rule raises :class:`SolverInputError` with an exact message."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import SolverInputError
from .problem import Candidate, Layer, Problem

__all__ = ["check_limit", "check_problem"]


def _show(value: Any) -> str:
    """Numbers as ``str`` (``nan``, ``-1.0``), everything else as ``repr``."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(value)
    return repr(value)


def _is_real(value: Any) -> bool:
    t = type(value)
    if t is float or t is int:  # fast path: the ABC check below is slow
        return True
    return isinstance(value, numbers.Real) and t is not bool


def _is_bits(value: Any) -> bool:
    t = type(value)
    if t is int:
        return value > 0
    return isinstance(value, numbers.Integral) and t is not bool and value > 0


def _finite_nonneg(value: Any) -> bool:
    if type(value) is float:
        return 0.0 <= value < math.inf
    return _is_real(value) and math.isfinite(value) and value >= 0


def check_limit(name: str, value: Any) -> None:
    """A budget limit must be a finite number > 0."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise SolverInputError(f"budget {name!r}: limit must be a finite number > 0, got {_show(value)}")


def _check_candidate(layer: str, index: int, cand: Any) -> None:
    if not isinstance(cand, Candidate):
        raise SolverInputError(
            f"layer {layer!r} candidate #{index}: must be a solver.Candidate, got {type(cand).__name__}"
        )
    for attr in ("wbits", "abits"):
        value = getattr(cand, attr)
        if not _is_bits(value):
            raise SolverInputError(
                f"layer {layer!r} candidate #{index}: {attr} must be a positive int, got {_show(value)}"
            )

    def where() -> str:
        return f"layer {layer!r} candidate ({cand.wbits}, {cand.abits})"

    sens = cand.sensitivity
    if not (type(sens) is float and -math.inf < sens < math.inf) and not (
        _is_real(sens) and math.isfinite(sens)
    ):
        raise SolverInputError(f"{where()}: sensitivity must be finite, got {_show(sens)}")
    costs = cand.costs
    if type(costs) is not dict and not isinstance(costs, Mapping):
        raise SolverInputError(
            f"{where()}: costs must be a mapping of budget name -> cost, got {type(costs).__name__}"
        )
    for key, cost in costs.items():
        if type(key) is not str:
            raise SolverInputError(f"{where()}: cost names must be strings, got {key!r}")
        if not _finite_nonneg(cost):
            raise SolverInputError(f"{where()}: cost {key!r} must be finite and >= 0, got {_show(cost)}")


def _check_fixed(layer: Layer, pairs: set[tuple[int, int]]) -> None:
    fixed = layer.fixed
    if fixed is None:
        return
    if (
        not isinstance(fixed, Sequence)
        or isinstance(fixed, str)
        or len(fixed) != 2
        or not all(map(_is_bits, fixed))
    ):
        raise SolverInputError(
            f"layer {layer.name!r}: fixed must be a (wbits, abits) pair of positive ints, got {fixed!r}"
        )
    pair = (int(fixed[0]), int(fixed[1]))
    if pair not in pairs:
        raise SolverInputError(f"layer {layer.name!r}: fixed {pair} is not among its candidates")


def _check_layer(index: int, layer: Any, budget_names: Sequence[str]) -> set[tuple[int, int]]:
    if not isinstance(layer, Layer):
        raise SolverInputError(f"layers[{index}] must be a solver.Layer, got {type(layer).__name__}")
    if not isinstance(layer.name, str) or not layer.name:
        raise SolverInputError(f"layers[{index}]: name must be a non-empty string, got {layer.name!r}")
    name = layer.name
    cands = layer.candidates
    if not isinstance(cands, Sequence) or isinstance(cands, str):
        raise SolverInputError(
            f"layer {name!r}: candidates must be a sequence of Candidate, got {type(cands).__name__}"
        )
    if len(cands) == 0:
        raise SolverInputError(f"layer {name!r}: has no candidates")
    pairs: set[tuple[int, int]] = set()
    inf = math.inf
    for i, cand in enumerate(cands):
        # fast path for plain ints, floats and a dict of str -> float; anything else gets the exact message
        if type(cand) is Candidate:
            w, a, s, costs = cand.wbits, cand.abits, cand.sensitivity, cand.costs
            plain = (
                type(w) is int
                and type(a) is int
                and w > 0
                and a > 0
                and type(s) is float
                and -inf < s < inf
                and type(costs) is dict
            )
            if plain:
                for key, cost in costs.items():
                    if type(key) is not str or type(cost) is not float or not 0.0 <= cost < inf:
                        plain = False
                        break
            if not plain:
                _check_candidate(name, i, cand)
            pair = (w, a) if plain else (int(w), int(a))
        else:
            _check_candidate(name, i, cand)
        if pair in pairs:
            raise SolverInputError(f"layer {name!r}: duplicate candidate {pair}")
        pairs.add(pair)
    for key in budget_names:
        having = [key in c.costs for c in cands]
        if any(having) and not all(having):
            missing = cands[having.index(False)]
            raise SolverInputError(
                f"layer {name!r} candidate ({missing.wbits}, {missing.abits}): cost {key!r} is missing "
                "while other candidates of the layer have it"
            )
    _check_fixed(layer, pairs)
    if layer.tie is not None and (not isinstance(layer.tie, str) or not layer.tie):
        raise SolverInputError(f"layer {name!r}: tie must be a non-empty string or None, got {layer.tie!r}")
    return pairs


def _check_ties(layers: Sequence[Layer], pair_sets: Sequence[set[tuple[int, int]]]) -> None:
    groups: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        if layer.tie is not None:
            groups.setdefault(layer.tie, []).append(i)
    for tie, members in groups.items():
        fixed_at: int | None = None
        for i in members:
            if layers[i].fixed is None:
                continue
            pair = (int(layers[i].fixed[0]), int(layers[i].fixed[1]))
            if fixed_at is None:
                fixed_at = i
            elif pair != tuple(layers[fixed_at].fixed):
                raise SolverInputError(
                    f"tie group {tie!r}: layers {layers[fixed_at].name!r} and {layers[i].name!r} are fixed to "
                    f"different pairs {tuple(layers[fixed_at].fixed)} and {pair}"
                )
        if fixed_at is not None:
            pair = (int(layers[fixed_at].fixed[0]), int(layers[fixed_at].fixed[1]))
            for i in members:
                if pair not in pair_sets[i]:
                    raise SolverInputError(
                        f"tie group {tie!r}: layer {layers[fixed_at].name!r} is fixed to {pair}, "
                        f"which layer {layers[i].name!r} does not offer"
                    )
        common = set.intersection(*(pair_sets[i] for i in members))
        if not common:
            names = ", ".join(repr(layers[i].name) for i in members)
            raise SolverInputError(
                f"tie group {tie!r}: layers {names} have no common (wbits, abits) candidate"
            )


def check_problem(problem: Any) -> None:
    """Raise :class:`SolverInputError` naming the first broken rule, or return None for a valid problem.

    Rules: budgets map names to finite limits > 0 and each names a cost that some candidate has; at least one
    layer; unique non-empty layer names; each layer has candidates with distinct positive-int (wbits, abits),
    a finite sensitivity and finite costs >= 0 (a budget's cost is given by all or none of a layer's candidates);
    ``fixed`` is one of the layer's pairs; ``tie`` is a non-empty string; the layers of a tie group share at least
    one pair, and agree with each other's ``fixed``.
    """
    if not isinstance(problem, Problem):
        raise SolverInputError(f"problem must be a solver.Problem, got {type(problem).__name__}")
    if not isinstance(problem.budgets, Mapping):
        raise SolverInputError(
            f"budgets must be a mapping of name -> limit, got {type(problem.budgets).__name__}"
        )
    for name, limit in problem.budgets.items():
        if not isinstance(name, str) or not name:
            raise SolverInputError(f"budget names must be non-empty strings, got {name!r}")
        check_limit(name, limit)
    layers = problem.layers
    if not isinstance(layers, Sequence) or isinstance(layers, str):
        raise SolverInputError(f"layers must be a sequence of Layer, got {type(layers).__name__}")
    if len(layers) == 0:
        raise SolverInputError("problem has no layers")
    budget_names = list(problem.budgets)
    seen: set[str] = set()
    pair_sets = []
    for i, layer in enumerate(layers):
        pair_sets.append(_check_layer(i, layer, budget_names))
        if layer.name in seen:
            raise SolverInputError(f"duplicate layer name {layer.name!r}")
        seen.add(layer.name)
    for name in budget_names:
        if not any(name in c.costs for layer in layers for c in layer.candidates):
            raise SolverInputError(f"budget {name!r}: no candidate has a cost named {name!r}")
    _check_ties(layers, pair_sets)
