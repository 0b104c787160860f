"""Hand-checkable instances with known optimal objective and assignment."""

from __future__ import annotations

import pytest

from solver import Candidate, Layer, Problem, solve


def L(name, *options, **kw):
    """options: (wbits, abits, sensitivity, size[, bops])"""
    cands = []
    for o in options:
        costs = {"size": float(o[3])}
        if len(o) > 4:
            costs["bops"] = float(o[4])
        cands.append(Candidate(o[0], o[1], float(o[2]), costs))
    return Layer(name, cands, **kw)


def test_two_layers_one_budget():
    # size <= 10: (4,4)+(4,4) costs 8 for 1+3 = 4; (8,8)+(2,2) costs 10 for 0+4.5; (2,2)+(8,8) costs 10 for 5
    layers = [
        L("a", (8, 8, 0, 8), (4, 4, 1, 4), (2, 2, 5, 2)),
        L("b", (8, 8, 0, 8), (4, 4, 3, 4), (2, 2, 4.5, 2)),
    ]
    r = solve(Problem(layers, {"size": 10}))
    assert r.status == "optimal" and r.objective == 4.0
    assert r.assignment == {"a": (4, 4), "b": (4, 4)}
    assert r.usage["size"].used == 8.0 and r.usage["size"].min_achievable == 4.0


def test_greedy_ratio_trap():
    # best ratio (layer a: 10 saved for 6) is a trap: a low, b and c high costs exactly 10 for objective 10
    layers = [
        L("a", (8, 8, 0, 6), (2, 2, 10, 0)),
        L("b", (8, 8, 0, 5), (2, 2, 6, 0)),
        L("c", (8, 8, 0, 5), (2, 2, 6, 0)),
    ]
    r = solve(Problem(layers, {"size": 10}))
    assert r.objective == 10.0
    assert r.assignment == {"a": (2, 2), "b": (8, 8), "c": (8, 8)}


def test_two_budgets():
    # size <= 10 and bops <= 10; high options cost x (6, 2), y (2, 6), z (4, 4); low options are free.
    # High sets: {x, y} costs (8, 8) and saves 6; {x, z} (10, 6) and {y, z} (6, 10) save 7; all three break
    # both budgets. Best: objective 3 + 3 + 4 - 7 = 3, with z high.
    layers = [
        L("x", (8, 8, 0, 6, 2), (2, 2, 3, 0, 0)),
        L("y", (8, 8, 0, 2, 6), (2, 2, 3, 0, 0)),
        L("z", (8, 8, 0, 4, 4), (2, 2, 4, 0, 0)),
    ]
    r = solve(Problem(layers, {"size": 10, "bops": 10}))
    assert r.status == "optimal" and r.objective == 3.0
    assert r.assignment["z"] == (8, 8)


def test_tie_group_takes_common_pair():
    # a and b tied: together (8,8) costs 16 > 12, so both take (4,4) (1 + 1) instead of one (8,8) each
    layers = [
        L("a", (8, 8, 0, 8), (4, 4, 1, 4), tie="qkv"),
        L("b", (8, 8, 0, 8), (4, 4, 1, 4), tie="qkv"),
        L("c", (8, 8, 0, 4), (4, 4, 5, 2)),
    ]
    r = solve(Problem(layers, {"size": 12}))
    assert r.objective == 2.0
    assert r.assignment == {"a": (4, 4), "b": (4, 4), "c": (8, 8)}


def test_fixed_layer_is_respected():
    layers = [L("head", (8, 8, 0, 8), (4, 4, 0.1, 4), fixed=(8, 8)), L("fc", (8, 8, 0, 8), (4, 4, 2, 4))]
    r = solve(Problem(layers, {"size": 12}))
    assert r.assignment == {"head": (8, 8), "fc": (4, 4)}
    assert r.objective == 2.0
    assert r.usage["size"].min_achievable == 12.0


def test_weightless_layer_with_few_candidates():
    # an attention matmul: wbits is a placeholder (16), candidates differ by abits only
    matmul = Layer(
        "attn.matmul_qk", [Candidate(16, a, 2.0 ** (3 - a), {"abits": a / 2}) for a in (3, 4, 5, 6, 8)]
    )
    linear = Layer(
        "attn.qkv",
        [Candidate(w, a, 2.0 ** (2 - w) + 2.0 ** (3 - a), {"abits": a / 2}) for w in (2, 4) for a in (3, 8)],
    )
    r = solve(Problem([matmul, linear], {"abits": 6.0}))
    # abits total a1/2 + a2/2 <= 6: best is matmul 4 bits (0.5) + qkv (4, 8) (0.25 + 2**-5)
    assert r.assignment == {"attn.matmul_qk": (16, 4), "attn.qkv": (4, 8)}
    assert r.objective == pytest.approx(0.5 + 0.25 + 2.0**-5)


def test_no_budget_takes_least_sensitive():
    layers = [L("a", (8, 8, 0.5, 8), (4, 4, 1, 4)), L("b", (8, 8, 2, 8), (4, 4, 1, 4))]
    r = solve(Problem(layers, {}))
    assert r.assignment == {"a": (8, 8), "b": (4, 4)} and r.objective == 1.5 and r.backend == "none"
