"""A time limit returns the best assignment found (status feasible, with a proven gap) or says none was found.

Timing-independent: a limit that has certainly passed before the search starts (1e-9 s: validation alone takes
longer) gives the same greedy answer on any machine, and each phase is checked with a deadline already in the
past. How close the limit is kept on large problems is measured in ``bench/solver.py``, not here.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from solver_testkit import check_consistent, large_problem

from solver import solve
from solver.compile import compile_problem
from solver.decompose import split_separable
from solver.dp import SuffixLP, pareto_fronts, solve_one_budget
from solver.heuristic import greedy_start, improve, round_lp
from solver.hull import hull
from solver.numerics import feasible, objective, usage
from solver.prune import prune_dominated

PAST = 0.0  # a time.perf_counter() value that has always passed


@pytest.fixture(scope="module")
def big():
    return large_problem(0)


@pytest.fixture(scope="module")
def big_optimum(big):
    full = solve(big, time_limit=None)
    assert full.status == "optimal"
    return full.objective


def _check_stopped(problem, r, optimum):
    """Every branch asserts: optimal answers are the optimum, stopped ones are valid with an honest gap."""
    assert r.optimal == (r.status == "optimal")
    if r.status == "optimal":
        assert r.objective == pytest.approx(optimum, rel=1e-9)
        assert r.gap == 0.0 and "time limit" not in r.message
    elif r.status == "feasible":
        check_consistent(problem, r)
        assert r.objective >= optimum * (1 - 1e-9)
        assert r.gap is not None and 0.0 <= r.gap < 1.0
        assert optimum >= r.objective * (1 - r.gap) * (1 - 1e-9)  # the gap's bound is a real lower bound
        assert not r.message.startswith("optimal")
        assert "time limit" in r.message or "stopped" in r.message or "Time limit" in r.message
    else:
        assert r.status == "time_limit_no_solution"
        assert r.objective is None and r.assignment == {} and r.gap is None
        assert all(u.used is None for u in r.usage.values())


@pytest.mark.parametrize("backend", ["highs", "cbc"])
@pytest.mark.parametrize("limit", [1e-9, 1e-4, 0.05])
def test_time_limit_result_is_consistent(big, big_optimum, backend, limit):
    r = solve(big, time_limit=limit, backend=backend)
    _check_stopped(big, r, big_optimum)
    if limit <= 1e-4:  # the limit passes during validation: the greedy answer, never "optimal"
        assert r.status == "feasible"


def test_limit_passed_before_the_search_gives_the_greedy_answer(big, big_optimum):
    r = solve(big, time_limit=1e-9)
    assert r.status == "feasible" and r.backend == "none"
    assert r.message == "time limit reached: best assignment found so far"
    # a real heuristic answer (measured: 1.6 % above the optimum), not the cheapest assignment (43x)
    assert r.objective <= 1.05 * big_optimum
    again = solve(big, time_limit=1e-9)
    assert again.assignment == r.assignment


def test_feasible_with_gap_when_stopped_early(big, big_optimum):
    r = solve(big, time_limit=0.05)
    assert r.status in ("optimal", "feasible")
    _check_stopped(big, r, big_optimum)


def test_round_lp_with_an_all_zero_group():
    """Regression (issue 13, bug 4): CBC's LP stopped by its time limit returned x = 0; the rounding called
    min() on the group's empty support."""
    comp = compile_problem(large_problem(1, n_layers=12))
    groups, limits = list(comp.groups), comp.limits
    x = [[1.0 if o == 0 else 0.0 for o in range(len(g.sens))] for g in groups]
    x[3] = [0.0] * len(groups[3].sens)  # no support at all
    x[5] = [0.5, 0.5] + [0.0] * (len(groups[5].sens) - 2)
    choice = round_lp(groups, x, limits, (0.0,) * len(limits))
    assert choice is not None and feasible(usage(groups, choice, len(limits)), limits)
    all_zero = [[0.0] * len(g.sens) for g in groups]
    choice = round_lp(groups, all_zero, limits, (0.0,) * len(limits))
    assert choice is not None and feasible(usage(groups, choice, len(limits)), limits)


def test_every_phase_stops_at_a_passed_deadline(big):
    comp = compile_problem(big)
    groups, limits = list(comp.groups), comp.limits
    assert prune_dominated(comp, PAST).groups == comp.groups  # pruning skipped, nothing lost
    assert split_separable(comp, deadline=PAST) is None
    assert solve_one_budget(groups, 0, limits[0], deadline=PAST).status == "aborted"
    costs = [[c[0] for c in g.costs] for g in groups]
    sens = [list(g.sens) for g in groups]
    assert pareto_fronts(costs, sens, limits[0], SuffixLP(costs, sens), 1e300, deadline=PAST) is None
    start = greedy_start(groups, limits, deadline=PAST)  # the greedy itself is O(S log S): always done
    assert start is not None and feasible(usage(groups, start, len(limits)), limits)
    before = list(start)
    improve(groups, start, limits, deadline=PAST)
    assert start == before
    finished = greedy_start(groups, limits)
    assert objective(groups, finished) <= objective(groups, start)


def test_suffix_lp_memory_is_linear():
    """Regression (issue 13, bug 3): the table was O(n^2) (1.4 GB at 5000 layers).

    Measured with tracemalloc (numpy reports its buffers to it): the table and its peak while sweeping the depths
    stay about 100 bytes per hull segment, at 150 and at 600 layers alike; an n x segments table would be
    8 * n bytes per segment (4.8 kB at 600 layers)."""
    per_segment = {}
    for n_layers in (150, 600):
        comp = compile_problem(large_problem(2, n_layers=n_layers))
        costs = [[c[0] for c in g.costs] for g in comp.groups]
        sens = [list(g.sens) for g in comp.groups]
        segments = sum(len(hull(c, s)[1]) for c, s in zip(costs, sens, strict=True))
        tracemalloc.start()
        try:
            suffix = SuffixLP(costs, sens)
            tracemalloc.reset_peak()
            for d in range(0, n_layers + 1, 25):
                suffix.value(d, np.asarray([1e12]))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        per_segment[n_layers] = peak / segments
    assert max(per_segment.values()) < 250, per_segment
