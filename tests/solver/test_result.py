"""The result object: JSON round trip and field semantics."""

from __future__ import annotations

import json

from solver_testkit import random_problem

from solver import SolveResult, solve


def test_to_dict_json_round_trip():
    r = solve(random_problem(1, ties=2))
    data = json.loads(json.dumps(r.to_dict()))
    assert data == r.to_dict()
    again = SolveResult.from_dict(data)
    assert again == r
    assert isinstance(again.assignment["layer0"], tuple)


def test_fields():
    r = solve(random_problem(2))
    assert r.status == "optimal" and r.optimal and r.gap == 0.0
    assert r.solve_time > 0 and r.backend in ("highs", "cbc", "none")
    assert set(r.usage) == {"size", "bops", "abits"}
    assert r.stats["candidates"] == 30 and r.stats["candidates_after_pruning"] <= 30
