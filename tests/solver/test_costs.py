"""Cost helpers: bytes, BOPs and normalised average bits."""

from __future__ import annotations

import pytest

from solver import CostModel, LayerFacts, Problem, SolverInputError, bops, solve, weight_bytes


def test_weight_bytes():
    # 100 params at 4 bits + 10 channels x (16-bit scale + 4-bit zero point) = 600 bits
    assert weight_bytes(100, 10, 4) == 75.0
    assert weight_bytes(100, 10, 4, zero_point_bits=8) == 80.0
    assert weight_bytes(100, 10, 4, scale_bits=32) == 95.0
    assert weight_bytes(100, 10, 16) == 200.0  # float16, no overhead
    assert weight_bytes(0, 0, 4) == 0.0


def test_bops():
    assert bops(10, 4, 8) == 320.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: weight_bytes(-1, 1, 4), "n_params must be a finite number >= 0, got -1", id="params"
        ),
        pytest.param(lambda: weight_bytes(1, 1, 0), "wbits must be a positive int, got 0", id="wbits"),
        pytest.param(lambda: bops(1, 4, 2.5), "abits must be a positive int, got 2.5", id="abits"),
    ],
)
def test_messages(call, message):
    with pytest.raises(SolverInputError, match=f"^{message}$"):
        call()


@pytest.fixture
def model():
    return CostModel(
        [
            LayerFacts("fc1", 300, 30, 3000, 10),
            LayerFacts("fc2", 100, 10, 1000, 30),
            LayerFacts("matmul_qk", 0, 0, 500, 60),
        ]
    )


def test_costs_units(model):
    c = model.costs("fc1", 4, 8)
    assert c["size"] == weight_bytes(300, 30, 4)
    assert c["bops"] == 3000 * 4 * 8
    assert c["wbits"] == 300 * 4 / 400
    assert c["abits"] == 10 * 8 / 100
    m = model.costs("matmul_qk", 16, 6)
    assert m["size"] == 0.0 and m["wbits"] == 0.0
    assert m["bops"] == 500 * 6 * 6  # both operands at abits
    assert "latency" not in c


def test_average_bits_are_linear(model):
    # every layer at (w, a): the wbits/abits totals are exactly the averages
    total_w = sum(model.costs(n, 5, 6)["wbits"] for n in ("fc1", "fc2", "matmul_qk"))
    total_a = sum(model.costs(n, 5, 6)["abits"] for n in ("fc1", "fc2", "matmul_qk"))
    assert total_w == pytest.approx(5.0) and total_a == pytest.approx(6.0)


def test_model_builds_a_solvable_problem(model):
    sens = {(w, a): 2.0 ** (-w) + 2.0 ** (-a) for w in (4, 8) for a in (4, 8)}
    layers = [
        model.layer("fc1", sens),
        model.layer("fc2", sens),
        model.layer("matmul_qk", {(16, a): 2.0**-a for a in (4, 8)}),
    ]
    r = solve(Problem(layers, model.budgets(avg_wbits=6.0, avg_abits=6.0)))
    assert r.status == "optimal"
    assert r.usage["wbits"].used <= 6.0 and r.usage["abits"].used <= 6.0


def test_latency_table():
    model = CostModel(
        [LayerFacts("fc1", 300, 30, 3000, 10, latency_ms={(4, 8): 1.5}), LayerFacts("fc2", 1, 1, 1, 1)]
    )
    assert model.costs("fc1", 4, 8)["latency"] == 1.5
    assert "latency" not in model.costs("fc2", 4, 8)  # layers without a table contribute nothing
    with pytest.raises(SolverInputError, match=r"^layer 'fc1': latency table has no entry for \(2, 8\)$"):
        model.costs("fc1", 2, 8)
