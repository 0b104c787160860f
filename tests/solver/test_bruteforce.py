"""Optimality against brute force on seeded random small problems, through every internal path."""

from __future__ import annotations

import pytest
from solver_testkit import brute_force, check_consistent, random_problem

from solver import engine, general, solve

CASES = [
    pytest.param({"budgets": ("size",)}, id="one-budget"),
    pytest.param({"budgets": ("abits",), "separable": True}, id="one-budget-separable"),
    pytest.param({"budgets": ("size", "abits")}, id="two-budgets"),
    pytest.param({"budgets": ("size", "abits"), "separable": True}, id="two-budgets-separable"),
    pytest.param({}, id="three-budgets"),
    pytest.param({"separable": True}, id="three-budgets-separable"),
    pytest.param({"separable": True, "tightness": 0.25}, id="three-budgets-separable-tight"),
    pytest.param({"fixed": 2}, id="fixed-layers"),
    pytest.param({"ties": 3}, id="tie-group"),
    pytest.param({"ties": 2, "fixed": 1, "separable": True}, id="ties-fixed-separable"),
    pytest.param({"integer_costs": True, "tightness": 0.3}, id="integer-costs"),
    pytest.param({"n_layers": 6, "grid": ((2, 4), (4, 6, 8)), "tightness": 0.2}, id="six-layers-tight"),
]


def _assert_matches(problem, result):
    ref = brute_force(problem)
    if ref is None:
        assert result.status == "infeasible"
        return
    assert result.status == "optimal", result.message
    assert result.optimal and result.gap == 0.0
    assert result.objective == pytest.approx(ref[0], rel=1e-9, abs=1e-12)
    check_consistent(problem, result)


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(kwargs, seed):
    problem = random_problem(seed, **kwargs)
    _assert_matches(problem, solve(problem))


@pytest.mark.parametrize("kwargs", CASES[2:6])
@pytest.mark.parametrize("seed", range(4))
def test_mip_path_matches_brute_force(kwargs, seed, monkeypatch):
    """Without the split, the DP and the small search, the reduced problem goes to the MIP backend."""
    monkeypatch.setattr(general, "_SEARCH_MAX_GROUPS", -1)
    monkeypatch.setattr(general.dp, "available", lambda: False)
    monkeypatch.setattr(engine, "split_separable", lambda comp, **kw: None)
    problem = random_problem(seed + 100, **kwargs)
    _assert_matches(problem, solve(problem))


@pytest.mark.parametrize("seed", range(3))
def test_cbc_backend_matches_brute_force(seed, monkeypatch):
    monkeypatch.setattr(general, "_SEARCH_MAX_GROUPS", -1)
    monkeypatch.setattr(general.dp, "available", lambda: False)
    monkeypatch.setattr(engine, "split_separable", lambda comp, **kw: None)
    problem = random_problem(seed + 200, tightness=0.35)
    _assert_matches(problem, solve(problem, backend="cbc"))


@pytest.mark.parametrize("seed", range(3))
def test_deterministic(seed):
    problem = random_problem(seed + 300, n_layers=6)
    first = solve(problem)
    assert all(solve(problem).assignment == first.assignment for _ in range(3))


def test_auto_falls_back_to_cbc_without_highspy(monkeypatch):
    from solver import backends

    monkeypatch.setattr(backends, "highs_available", lambda: False)
    monkeypatch.setattr(general, "_SEARCH_MAX_GROUPS", -1)
    monkeypatch.setattr(general.dp, "available", lambda: False)
    monkeypatch.setattr(engine, "split_separable", lambda comp, **kw: None)
    problem = random_problem(400, tightness=0.35)
    result = solve(problem)
    assert result.backend == "cbc"
    _assert_matches(problem, result)
