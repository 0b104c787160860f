"""Every input rule has an exact error message."""

from __future__ import annotations

import math
import re

import pytest

from solver import Candidate, Layer, Problem, SolverInputError, pareto_sweep, solve


def cand(w=4, a=4, s=1.0, **costs):
    return Candidate(w, a, s, costs or {"size": 1.0})


def layer(name="blocks.0.attn.qkv", cands=None, **kw):
    return Layer(name, cands if cands is not None else [cand(4, 4), cand(8, 8, 0.5, size=2.0)], **kw)


def problem(*layers, budgets=None):
    return Problem(list(layers) or [layer()], {"size": 10.0} if budgets is None else budgets)


CASES = [
    pytest.param(
        problem(layer(cands=[cand(4, 4, math.nan)])),
        "layer 'blocks.0.attn.qkv' candidate (4, 4): sensitivity must be finite, got nan",
        id="nan-sensitivity",
    ),
    pytest.param(
        problem(layer(cands=[cand(4, 4, math.inf)])),
        "layer 'blocks.0.attn.qkv' candidate (4, 4): sensitivity must be finite, got inf",
        id="inf-sensitivity",
    ),
    pytest.param(
        problem(layer(cands=[cand(4, 4, "x")])),
        "layer 'blocks.0.attn.qkv' candidate (4, 4): sensitivity must be finite, got 'x'",
        id="non-number-sensitivity",
    ),
    pytest.param(
        problem(layer(cands=[cand(4, 4, size=-1.0)])),
        "layer 'blocks.0.attn.qkv' candidate (4, 4): cost 'size' must be finite and >= 0, got -1.0",
        id="negative-cost",
    ),
    pytest.param(
        problem(layer(cands=[cand(4, 4, size=math.inf)])),
        "layer 'blocks.0.attn.qkv' candidate (4, 4): cost 'size' must be finite and >= 0, got inf",
        id="infinite-cost",
    ),
    pytest.param(
        problem(layer(cands=[cand(4, 4, size=math.nan)])),
        "layer 'blocks.0.attn.qkv' candidate (4, 4): cost 'size' must be finite and >= 0, got nan",
        id="nan-cost",
    ),
    pytest.param(
        problem(budgets={"size": 10.0, "latency": 5.0}),
        "budget 'latency': no candidate has a cost named 'latency'",
        id="budget-without-cost",
    ),
    pytest.param(
        problem(
            layer(cands=[cand(4, 4, size=1.0, bops=2.0), cand(8, 8, size=2.0)]),
            budgets={"size": 9.0, "bops": 9.0},
        ),
        "layer 'blocks.0.attn.qkv' candidate (8, 8): cost 'bops' is missing while other candidates of the layer have it",
        id="cost-missing-in-some-candidates",
    ),
    pytest.param(
        problem(budgets={"size": 0.0}),
        "budget 'size': limit must be a finite number > 0, got 0.0",
        id="zero-limit",
    ),
    pytest.param(
        problem(budgets={"size": -3}),
        "budget 'size': limit must be a finite number > 0, got -3",
        id="negative-limit",
    ),
    pytest.param(
        problem(budgets={"size": math.inf}),
        "budget 'size': limit must be a finite number > 0, got inf",
        id="inf-limit",
    ),
    pytest.param(
        problem(layer(fixed=(3, 3))),
        "layer 'blocks.0.attn.qkv': fixed (3, 3) is not among its candidates",
        id="fixed-unknown",
    ),
    pytest.param(
        problem(layer(fixed=(4,))),
        "layer 'blocks.0.attn.qkv': fixed must be a (wbits, abits) pair of positive ints, got (4,)",
        id="fixed-malformed",
    ),
    pytest.param(
        problem(layer(fixed=(4.0, 4))),
        "layer 'blocks.0.attn.qkv': fixed must be a (wbits, abits) pair of positive ints, got (4.0, 4)",
        id="fixed-not-int",
    ),
    pytest.param(
        problem(layer(cands=[])), "layer 'blocks.0.attn.qkv': has no candidates", id="no-candidates"
    ),
    pytest.param(problem(layer(), layer()), "duplicate layer name 'blocks.0.attn.qkv'", id="duplicate-layer"),
    pytest.param(
        problem(layer(cands=[cand(4, 4), cand(4, 4, 0.3)])),
        "layer 'blocks.0.attn.qkv': duplicate candidate (4, 4)",
        id="duplicate-candidate",
    ),
    pytest.param(
        problem(layer("a", [cand(4, 4)], tie="g"), layer("b", [cand(8, 8)], tie="g")),
        "tie group 'g': layers 'a', 'b' have no common (wbits, abits) candidate",
        id="tie-no-common",
    ),
    pytest.param(
        problem(layer("a", fixed=(4, 4), tie="g"), layer("b", fixed=(8, 8), tie="g")),
        "tie group 'g': layers 'a' and 'b' are fixed to different pairs (4, 4) and (8, 8)",
        id="tie-fixed-conflict",
    ),
    pytest.param(
        problem(layer("a", fixed=(4, 4), tie="g"), layer("b", [cand(8, 8), cand(2, 2)], tie="g")),
        "tie group 'g': layer 'a' is fixed to (4, 4), which layer 'b' does not offer",
        id="tie-fixed-not-offered",
    ),
    pytest.param(
        problem(layer(tie="")),
        "layer 'blocks.0.attn.qkv': tie must be a non-empty string or None, got ''",
        id="tie-empty",
    ),
    pytest.param(
        problem(layer(cands=[Candidate(0, 4, 1.0, {"size": 1.0})])),
        "layer 'blocks.0.attn.qkv' candidate #0: wbits must be a positive int, got 0",
        id="zero-wbits",
    ),
    pytest.param(
        problem(layer(cands=[Candidate(4, True, 1.0, {"size": 1.0})])),
        "layer 'blocks.0.attn.qkv' candidate #0: abits must be a positive int, got True",
        id="bool-abits",
    ),
    pytest.param(
        problem(layer(cands=[(4, 4, 1.0)])),
        "layer 'blocks.0.attn.qkv' candidate #0: must be a solver.Candidate, got tuple",
        id="not-a-candidate",
    ),
    pytest.param(Problem([], {"size": 1.0}), "problem has no layers", id="no-layers"),
    pytest.param(
        Problem(["x"], {"size": 1.0}), "layers[0] must be a solver.Layer, got str", id="not-a-layer"
    ),
    pytest.param(problem(layer("")), "layers[0]: name must be a non-empty string, got ''", id="empty-name"),
    pytest.param({"layers": []}, "problem must be a solver.Problem, got dict", id="not-a-problem"),
]


@pytest.mark.parametrize(("prob", "message"), CASES)
def test_message(prob, message):
    with pytest.raises(SolverInputError, match=f"^{re.escape(message)}$"):
        solve(prob)


def test_is_a_value_error():
    assert issubclass(SolverInputError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(
            {"time_limit": 0},
            "time_limit must be None or a finite number of seconds > 0, got 0",
            id="time-limit",
        ),
        pytest.param(
            {"backend": "gurobi"}, "backend must be one of 'auto', 'highs', 'cbc', got 'gurobi'", id="backend"
        ),
        pytest.param({"mip_gap": -0.1}, "mip_gap must be a number in [0, 1), got -0.1", id="mip-gap"),
    ],
)
def test_option_messages(kwargs, message):
    with pytest.raises(SolverInputError, match=f"^{re.escape(message)}$"):
        solve(problem(), **kwargs)


@pytest.mark.parametrize(
    ("budget", "values", "kwargs", "message"),
    [
        pytest.param(
            "bops",
            [1.0],
            {},
            "pareto_sweep: budget 'bops' is not one of the problem's budgets ['size']",
            id="budget",
        ),
        pytest.param(
            "size", [1.0, 0.0], {}, "budget 'size': limit must be a finite number > 0, got 0.0", id="value"
        ),
        pytest.param(
            "size",
            [1.0],
            {"gap": 0.1},
            "pareto_sweep: unknown solve option 'gap' (allowed: time_limit, backend, mip_gap)",
            id="option",
        ),
    ],
)
def test_sweep_messages(budget, values, kwargs, message):
    with pytest.raises(SolverInputError, match=f"^{re.escape(message)}$"):
        pareto_sweep(problem(), budget, values, **kwargs)
