"""Regression (issue 13, bug 2): sensitivities spread over ~18 decades (each layer's multiplied by
``10 ** uniform(-8, 8)``) must not produce a wrong "optimal". Every path (dynamic program, Lagrangian fixing,
branch and bound, HiGHS, CBC) is compared with brute force on small instances and with each other on larger ones.
"""

from __future__ import annotations

import pytest
from solver_testkit import (
    brute_force,
    check_consistent,
    large_problem,
    random_problem,
    spread_sensitivities,
)

from solver import engine, general, solve
from solver.backends import MIPOutcome, get_backend


def _mip_only(monkeypatch):
    """Send every non-trivial problem to the MIP backend (no split, no DP, no small search)."""
    monkeypatch.setattr(general, "_SEARCH_MAX_GROUPS", -1)
    monkeypatch.setattr(general, "_LAGDP_MAX_GROUPS", -1)
    monkeypatch.setattr(general.dp, "available", lambda: False)
    monkeypatch.setattr(engine, "split_separable", lambda comp, **kw: None)


def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b))


CASES = [
    pytest.param({"budgets": ("size",)}, id="one-budget"),
    pytest.param({"budgets": ("size", "abits")}, id="two-budgets"),
    pytest.param({"tightness": 0.3}, id="three-budgets-tight"),
    pytest.param({"separable": True, "tightness": 0.3}, id="three-budgets-separable"),
    pytest.param({"n_layers": 6, "grid": ((2, 4), (4, 6, 8)), "tightness": 0.2}, id="six-layers"),
]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("path", ["default", "mip-highs", "mip-cbc"])
def test_wide_range_matches_brute_force(kwargs, seed, path, monkeypatch):
    problem = spread_sensitivities(random_problem(seed + 500, **kwargs), seed)
    ref = brute_force(problem)
    if path != "default":
        _mip_only(monkeypatch)
    r = solve(problem, time_limit=None, backend="cbc" if path == "mip-cbc" else "auto")
    if ref is None:
        assert r.status == "infeasible"
        return
    assert r.status == "optimal", r.message
    assert r.objective == pytest.approx(ref[0], rel=1e-9, abs=0.0)
    check_consistent(problem, r)


@pytest.mark.parametrize("seed", range(3))
def test_wide_range_dp_and_both_backends_agree(seed, monkeypatch):
    """74 layers, 30 candidates each, three budgets: the default pipeline (DP / Lagrangian DP / HiGHS) and the
    MIP path on each backend find the same optimum."""
    problem = spread_sensitivities(large_problem(seed, 74), seed)
    default = solve(problem, time_limit=120)
    _mip_only(monkeypatch)
    highs = solve(problem, time_limit=120, backend="highs")
    cbc = solve(problem, time_limit=120, backend="cbc")
    for r in (default, highs, cbc):
        check_consistent(problem, r)
    optimal = [r for r in (default, highs, cbc) if r.status == "optimal"]
    assert default.status == "optimal", default.message
    for r in optimal:
        assert _rel(r.objective, default.objective) <= 1e-9, (r.backend, r.message)
    for r in (highs, cbc):  # an answer not called optimal must still be consistent with its gap
        assert r.objective >= default.objective * (1 - 1e-9)
        if r.status != "optimal":
            assert r.gap is not None and default.objective >= r.objective * (1 - r.gap) * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_wide_range_single_budget_dp_matches_mip(seed, monkeypatch):
    """One budget: the exact dynamic program against HiGHS and CBC on the same spread instance."""
    base = large_problem(seed, 60)
    problem = spread_sensitivities(type(base)(base.layers, {"size": base.budgets["size"]}), seed + 10)
    dp_result = solve(problem, time_limit=120)
    assert dp_result.status == "optimal" and "dynamic program" in dp_result.message
    _mip_only(monkeypatch)
    for backend in ("highs", "cbc"):
        r = solve(problem, time_limit=120, backend=backend)
        assert r.status == "optimal", r.message
        assert _rel(r.objective, dp_result.objective) <= 1e-9, backend


class _OverconfidentBackend:
    """Claims "optimal" for an assignment that is worse than the incumbent (as a tolerance-bound MIP could)."""

    name = "overconfident"

    def __init__(self):
        self.inner = get_backend("highs")

    def solve_lp(self, *args, **kwargs):
        return self.inner.solve_lp(*args, **kwargs)

    def solve_mip(self, groups, rhs, scale, **kwargs):
        best = self.inner.solve_mip(groups, rhs, scale, **kwargs).choice
        # move one group to a cheaper, more sensitive option: still meets every budget, but worse
        for gi, g in enumerate(groups):
            for o in range(len(g.sens)):
                if g.sens[o] > g.sens[best[gi]] and all(
                    c <= b for c, b in zip(g.costs[o], g.costs[best[gi]])
                ):
                    worse = list(best)
                    worse[gi] = o
                    return MIPOutcome("optimal", worse, None)
        raise AssertionError("no worse assignment to report")


def test_a_wrong_optimal_claim_is_not_passed_on(monkeypatch):
    _mip_only(monkeypatch)
    monkeypatch.setattr("solver.api.get_backend", lambda name: _OverconfidentBackend())
    problem = random_problem(7, n_layers=6, tightness=0.3)
    r = solve(problem, time_limit=None)
    ref = brute_force(problem)
    assert r.status == "feasible" and "reported a worse assignment as optimal" in r.message
    assert r.gap is not None and ref[0] >= r.objective * (1 - r.gap) - 1e-12
    check_consistent(problem, r)
