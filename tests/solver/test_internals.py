"""Exactness of the internal reductions (pruning, Lagrangian DP fixing) and the MIP safety net."""

from __future__ import annotations

import itertools

import pytest
from solver_testkit import random_problem

from solver import engine, general, solve
from solver.backends import MIPOutcome, get_backend
from solver.backends.highs import HighsBackend
from solver.compile import compile_problem
from solver.lagdp import dp_fix
from solver.lagrange import lagrangian
from solver.numerics import feasible, objective, usage
from solver.prune import prune_dominated


def _all_feasible(groups, limits):
    m = len(limits)
    for choice in itertools.product(*(range(len(g.sens)) for g in groups)):
        if feasible(usage(groups, choice, m), limits):
            yield objective(groups, choice), choice


@pytest.mark.parametrize("seed", range(8))
def test_pruning_keeps_the_optimum(seed):
    comp = compile_problem(random_problem(seed, n_layers=5))
    pruned = prune_dominated(comp)
    best = min(v for v, _ in _all_feasible(comp.groups, comp.limits))
    assert min(v for v, _ in _all_feasible(pruned.groups, pruned.limits)) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_lagrangian_dp_fixing_keeps_every_good_assignment(seed):
    comp = prune_dominated(compile_problem(random_problem(seed, n_layers=5, tightness=0.3)))
    groups, limits = list(comp.groups), comp.limits
    sols = sorted(_all_feasible(groups, limits))
    upper = sols[min(3, len(sols) - 1)][0]  # a few assignments are at or below this value
    lp = HighsBackend().solve_lp(groups, limits, limits, None)
    lower, _ = lagrangian(groups, limits, lp.lam)
    for k in range(len(limits)):
        keep, bound = dp_fix(groups, limits, lp.lam, k, upper)
        assert bound <= sols[0][0] + 1e-9  # a valid lower bound ...
        assert bound >= lower - 1e-9  # ... at least as strong as the LP's
        for value, choice in sols:
            if value <= upper:
                assert all(o in kept for o, kept in zip(choice, keep))


class _SloppyBackend:
    """Returns, once, an assignment that breaks a budget (as a solver tolerance could)."""

    name = "sloppy"

    def __init__(self):
        self.inner = get_backend("highs")
        self.calls = 0

    def solve_lp(self, *args, **kwargs):
        return self.inner.solve_lp(*args, **kwargs)

    def solve_mip(self, groups, rhs, scale, **kwargs):
        self.calls += 1
        if self.calls == 1:
            m = len(rhs)
            worst = [
                max(range(len(g.sens)), key=lambda o, g=g: sum(g.costs[o][k] for k in range(m)))
                for g in groups
            ]
            return MIPOutcome("optimal", worst, None)
        return self.inner.solve_mip(groups, rhs, scale, **kwargs)


def test_mip_assignment_breaking_a_budget_is_resolved(monkeypatch):
    monkeypatch.setattr(general, "_SEARCH_MAX_GROUPS", -1)
    monkeypatch.setattr(general, "_LAGDP_MAX_GROUPS", -1)
    monkeypatch.setattr(general.dp, "available", lambda: False)
    monkeypatch.setattr(engine, "split_separable", lambda comp, **kw: None)
    sloppy = _SloppyBackend()
    monkeypatch.setattr("solver.api.get_backend", lambda name: sloppy)
    problem = random_problem(5, n_layers=6, tightness=0.3)
    r = solve(problem)
    assert sloppy.calls >= 2
    assert r.status == "feasible" and "tightened limits" in r.message
    for name, u in r.usage.items():
        assert u.used <= u.limit * (1 + 1e-9), name
