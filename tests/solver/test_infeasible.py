"""Infeasible problems are reported with the minimum achievable value of every budget, never raised."""

from __future__ import annotations

from solver import Candidate, Layer, Problem, solve


def two_option_layer(name, **kw):
    # (8, 8): size 10, bops 1; (2, 2): size 1, bops 10
    return Layer(
        name,
        [
            Candidate(8, 8, 0.0, {"size": 10.0, "bops": 1.0}),
            Candidate(2, 2, 1.0, {"size": 1.0, "bops": 10.0}),
        ],
        **kw,
    )


def test_budget_alone_unreachable():
    layers = [Layer(f"l{i}", [Candidate(4, 4, 1.0, {"size": 500.0, "bops": 1.0})]) for i in range(3)]
    r = solve(Problem(layers, {"size": 1000, "bops": 10}))
    assert r.status == "infeasible" and not r.optimal
    assert r.objective is None and r.assignment == {} and r.gap is None
    assert r.infeasible_budgets == ("size",)
    assert r.message == "budget 'size' cannot be met: limit 1000 < minimum achievable 1500"
    assert r.usage["size"].min_achievable == 1500.0 and r.usage["size"].used is None
    assert r.usage["bops"].min_achievable == 3.0 and r.usage["bops"].limit == 10


def test_two_budgets_each_unreachable():
    layers = [two_option_layer("a"), two_option_layer("b")]
    r = solve(Problem(layers, {"size": 1.5, "bops": 1.5}))
    assert r.infeasible_budgets == ("size", "bops")
    assert r.message == (
        "budget 'size' cannot be met: limit 1.5 < minimum achievable 2; "
        "budget 'bops' cannot be met: limit 1.5 < minimum achievable 2"
    )


def test_budgets_jointly_infeasible():
    layers = [two_option_layer("a"), two_option_layer("b")]
    r = solve(Problem(layers, {"size": 5.0, "bops": 5.0}))
    assert r.status == "infeasible"
    assert r.infeasible_budgets == ()
    assert r.message == "budgets 'size', 'bops' cannot all be met at once (each alone can)"
    assert {k: u.min_achievable for k, u in r.usage.items()} == {"size": 2.0, "bops": 2.0}


def test_min_achievable_respects_fixed_and_ties():
    layers = [
        two_option_layer("a", fixed=(8, 8)),
        two_option_layer("b", tie="t"),
        Layer("c", [Candidate(8, 8, 0.0, {"size": 10.0, "bops": 1.0})], tie="t"),
    ]
    # a fixed at size 10; b tied to c, whose only pair is (8, 8): size 20 more
    r = solve(Problem(layers, {"size": 25.0, "bops": 100.0}))
    assert r.status == "infeasible"
    assert r.usage["size"].min_achievable == 30.0
    assert r.message == "budget 'size' cannot be met: limit 25 < minimum achievable 30"


def test_infeasible_result_is_json_friendly():
    import json

    layers = [two_option_layer("a"), two_option_layer("b")]
    r = solve(Problem(layers, {"size": 5.0, "bops": 5.0}))
    assert json.loads(json.dumps(r.to_dict()))["status"] == "infeasible"
