"""Shared helpers for the solver tests: random small problems and a brute-force reference."""

from __future__ import annotations

import itertools
import random

from solver import Candidate, Layer, Problem

BUDGETS = ("size", "bops", "abits")


def random_problem(
    seed: int,
    *,
    n_layers: int = 5,
    budgets: tuple[str, ...] = BUDGETS,
    separable: bool = False,
    grid: tuple[tuple[int, ...], tuple[int, ...]] = ((2, 4, 8), (4, 8)),
    fixed: int = 0,
    ties: int = 0,
    tightness: float = 0.5,
    integer_costs: bool = False,
) -> Problem:
    """Layers with a (wbits x abits) grid of candidates; sensitivities decrease with bits (noisy, additive when
    ``separable``); costs: size ~ params * wbits, bops ~ macs * wbits * abits, abits ~ elements * abits. Each
    budget's limit lies ``tightness`` of the way between its minimum and maximum achievable total."""
    rng = random.Random(seed)
    ws, as_ = grid
    layers = []
    for i in range(n_layers):
        params = rng.randint(1, 20)
        macs = rng.randint(1, 20)
        elems = rng.randint(1, 20)
        sw = rng.lognormvariate(0, 1)
        sa = rng.lognormvariate(0, 1)
        wpart = {w: sw * 2.0 ** (-w) * rng.uniform(0.5, 1.5) for w in ws}
        apart = {a: sa * 2.0 ** (-a) * rng.uniform(0.5, 1.5) for a in as_}
        cands = []
        for w in ws:
            for a in as_:
                sens = wpart[w] + apart[a]
                if not separable:
                    sens *= rng.uniform(0.7, 1.3)
                costs = {"size": params * w, "bops": macs * w * a, "abits": elems * a}
                if not integer_costs:
                    costs = {
                        k: v * rng.uniform(0.9, 1.1) if k == "bops" else float(v) for k, v in costs.items()
                    }
                cands.append(Candidate(w, a, sens, {k: costs[k] for k in budgets}))
        layers.append(Layer(f"layer{i}", cands))
    for i in rng.sample(range(n_layers), fixed):
        c = rng.choice(layers[i].candidates)
        layers[i] = Layer(layers[i].name, layers[i].candidates, fixed=(c.wbits, c.abits))
    if ties:
        tied = rng.sample(
            [i for i in range(n_layers) if layers[i].fixed is None], min(ties, n_layers - fixed)
        )
        for i in tied:
            layers[i] = Layer(layers[i].name, layers[i].candidates, tie="group0")
    limits = {}
    for b in budgets:
        lo = sum(min(c.costs[b] for c in layer.candidates) for layer in layers)
        hi = sum(max(c.costs[b] for c in layer.candidates) for layer in layers)
        limits[b] = lo + tightness * (hi - lo)
    return Problem(layers, limits)


def brute_force(problem: Problem) -> tuple[float, dict[str, tuple[int, int]]] | None:
    """Optimal objective and one optimal assignment by enumeration, or None when infeasible."""
    layers = list(problem.layers)
    options = []
    for layer in layers:
        cands = list(layer.candidates)
        if layer.fixed is not None:
            cands = [c for c in cands if (c.wbits, c.abits) == tuple(layer.fixed)]
        options.append(cands)
    best = None
    for combo in itertools.product(*options):
        ties: dict[str, tuple[int, int]] = {}
        ok = True
        for layer, c in zip(layers, combo):
            if layer.tie is not None and ties.setdefault(layer.tie, (c.wbits, c.abits)) != (c.wbits, c.abits):
                ok = False
                break
        if not ok:
            continue
        if any(
            sum(c.costs.get(b, 0.0) for c in combo) > lim * (1 + 1e-9) for b, lim in problem.budgets.items()
        ):
            continue
        value = sum(c.sensitivity for c in combo)
        if best is None or value < best[0]:
            best = (value, {layer.name: (c.wbits, c.abits) for layer, c in zip(layers, combo)})
    return best


def check_consistent(problem: Problem, result) -> None:
    """The result's objective, usage and assignment agree with the problem and meet every budget."""
    if result.objective is None:
        assert result.assignment == {}
        return
    by_name = {layer.name: layer for layer in problem.layers}
    assert set(result.assignment) == set(by_name)
    total = 0.0
    used = dict.fromkeys(problem.budgets, 0.0)
    ties: dict[str, tuple[int, int]] = {}
    for name, pair in result.assignment.items():
        layer = by_name[name]
        cand = next(c for c in layer.candidates if (c.wbits, c.abits) == pair)
        if layer.fixed is not None:
            assert pair == tuple(layer.fixed)
        if layer.tie is not None:
            assert ties.setdefault(layer.tie, pair) == pair
        total += cand.sensitivity
        for b in used:
            used[b] += cand.costs.get(b, 0.0)
    assert abs(total - result.objective) <= 1e-9 * max(1.0, abs(total))
    for b, lim in problem.budgets.items():
        assert used[b] <= lim * (1 + 1e-9)
        assert abs(result.usage[b].used - used[b]) <= 1e-9 * max(1.0, abs(used[b]))
        assert result.usage[b].limit == lim


def large_problem(seed: int, n_layers: int = 150) -> Problem:
    """A ViT-sized random problem: 6 x 5 candidates per layer, interacting sensitivities, 3 tight budgets."""
    rng = random.Random(seed)
    layers = []
    for i in range(n_layers):
        params, macs, elems = (rng.choice((1, 3, 4)) * 1e6 for _ in range(3))
        sw, sa = rng.lognormvariate(0, 1), rng.lognormvariate(0, 1)
        cands = [
            Candidate(
                w,
                a,
                (sw * 4.0 ** (2 - w) + sa * 4.0 ** (3 - a)) * rng.uniform(0.8, 1.2),
                {"size": params * w / 8, "bops": macs * w * a, "abits": elems * a / 1e6},
            )
            for w in (2, 3, 4, 5, 6, 8)
            for a in (3, 4, 5, 6, 8)
        ]
        layers.append(Layer(f"blocks.{i}.fc", cands))
    limits = {}
    for b, frac in (("size", 0.4), ("bops", 0.3), ("abits", 0.5)):
        lo = sum(min(c.costs[b] for c in layer.candidates) for layer in layers)
        hi = sum(max(c.costs[b] for c in layer.candidates) for layer in layers)
        limits[b] = lo + frac * (hi - lo)
    return Problem(layers, limits)


def spread_sensitivities(problem: Problem, seed: int, decades: float = 8.0) -> Problem:
    """The same problem with each layer's sensitivities multiplied by ``10 ** uniform(-decades, decades)``
    (issue 13: sensitivities spread over ~18 decades)."""
    rng = random.Random(seed)
    layers = []
    for layer in problem.layers:
        f = 10.0 ** rng.uniform(-decades, decades)
        cands = [Candidate(c.wbits, c.abits, c.sensitivity * f, c.costs) for c in layer.candidates]
        layers.append(Layer(layer.name, cands, fixed=layer.fixed, tie=layer.tie))
    return Problem(layers, problem.budgets)
