"""A time limit returns the best assignment found (status feasible, with its gap) or says none was found."""

from __future__ import annotations

import pytest
from solver_testkit import check_consistent, large_problem

from solver import solve


@pytest.fixture(scope="module")
def big():
    return large_problem(0)


@pytest.mark.parametrize("backend", ["highs", "cbc"])
@pytest.mark.parametrize("limit", [1e-4, 0.05])
def test_time_limit_result_is_consistent(big, backend, limit):
    r = solve(big, time_limit=limit, backend=backend)
    assert r.status in ("optimal", "feasible", "time_limit_no_solution")
    if limit == 1e-4:
        assert r.status in ("feasible", "time_limit_no_solution")
    assert r.optimal == (r.status == "optimal")
    if r.status == "time_limit_no_solution":
        assert r.objective is None and r.assignment == {} and r.gap is None
        assert all(u.used is None for u in r.usage.values())
    else:
        check_consistent(big, r)
    if r.status == "feasible":
        assert r.gap is None or r.gap >= 0.0
        assert "time limit" in r.message or "stopped" in r.message


def test_feasible_with_gap_when_stopped_early(big):
    full = solve(big, time_limit=60)
    assert full.status == "optimal"
    r = solve(big, time_limit=0.05)
    if r.status == "feasible":
        assert r.objective >= full.objective - 1e-9
        if r.gap is not None:
            assert full.objective >= r.objective * (1 - r.gap) - 1e-9
