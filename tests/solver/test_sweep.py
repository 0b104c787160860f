"""Pareto sweeps: results in input order, monotone objective, same optimum as single solves."""

from __future__ import annotations

import itertools

import pytest
from solver_testkit import check_consistent, random_problem

from solver import pareto_sweep, solve


@pytest.mark.parametrize("separable", [False, True], ids=["general", "separable"])
def test_sweep_monotone_and_matches_single_solves(separable):
    problem = random_problem(7, n_layers=6, separable=separable, tightness=0.4)
    lo = problem.budgets["size"] * 0.6
    hi = problem.budgets["size"] * 1.6
    values = [lo + (hi - lo) * i / 9 for i in (3, 0, 9, 5, 1, 8, 2, 7, 4, 6)]  # shuffled on purpose
    results = pareto_sweep(problem, "size", values)
    assert [r.usage["size"].limit for r in results] == values
    for value, r in zip(values, results):
        single = solve(type(problem)(problem.layers, {**problem.budgets, "size": value}))
        assert r.status == single.status
        if r.objective is not None:
            assert r.objective == pytest.approx(single.objective, rel=1e-9)
            check_consistent(type(problem)(problem.layers, {**problem.budgets, "size": value}), r)
    ordered = [r for _, r in sorted(zip(values, results), key=lambda t: t[0]) if r.optimal]
    for a, b in itertools.pairwise(ordered):
        assert b.objective <= a.objective + 1e-12


def test_sweep_reports_infeasible_points():
    problem = random_problem(3, n_layers=4)
    low = problem.budgets["size"] * 1e-3
    results = pareto_sweep(problem, "size", [low, problem.budgets["size"]])
    assert results[0].status == "infeasible" and results[0].infeasible_budgets == ("size",)
    assert results[0].usage["size"].min_achievable > low
    assert results[1].status == "optimal"
