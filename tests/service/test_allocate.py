"""POST /v1/allocate: the solver behind HTTP, with its statuses and error cases."""

from __future__ import annotations

import json

import pytest

from .conftest import error_of


def _layer(name: str, options: list[tuple[int, float, float]], **extra) -> dict:
    """options: (bits, sensitivity, size cost)."""
    return {
        "name": name,
        "candidates": [
            {"wbits": bits, "abits": 8, "sensitivity": sens, "costs": {"size": size}}
            for bits, sens, size in options
        ],
        **extra,
    }


PROBLEM = {
    "layers": [
        _layer("a", [(2, 10.0, 2.0), (4, 1.0, 4.0), (8, 0.0, 8.0)]),
        _layer("b", [(2, 3.0, 2.0), (4, 2.0, 4.0), (8, 0.0, 8.0)]),
    ],
    "budgets": {"size": 8.0},
}


def test_allocate_finds_the_optimum(client, tenant) -> None:
    response = client.post("/v1/allocate", headers=tenant.headers, json=PROBLEM)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "optimal" and body["optimal"] is True
    # a=4 (1.0) + b=4 (2.0) = 3.0 beats a=2+b=8... (10.0) and a=8+b=... (size 10 > 8)
    assert body["assignment"] == {"a": [4, 8], "b": [4, 8]}
    assert body["objective"] == pytest.approx(3.0)
    assert body["usage"]["size"]["used"] == pytest.approx(8.0)


def test_infeasible_budget_is_422_with_min_achievable(client, tenant) -> None:
    problem = {**PROBLEM, "budgets": {"size": 3.0}}
    response = client.post("/v1/allocate", headers=tenant.headers, json=problem)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "infeasible_budget"
    assert error["details"]["min_achievable"] == {"size": pytest.approx(4.0)}
    assert "size" in error["message"]


def test_fixed_layer_not_among_candidates_is_422(client, tenant) -> None:
    problem = {**PROBLEM, "layers": [_layer("a", [(2, 1.0, 2.0)], fixed=[4, 8])]}
    response = client.post("/v1/allocate", headers=tenant.headers, json=problem)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_problem"
    assert "'a'" in error["message"]


def test_duplicate_layer_names_are_422(client, tenant) -> None:
    problem = {**PROBLEM, "layers": [PROBLEM["layers"][0], PROBLEM["layers"][0]]}
    response = client.post("/v1/allocate", headers=tenant.headers, json=problem)
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_problem"


def test_nan_sensitivity_is_rejected(client, tenant) -> None:
    problem = json.loads(json.dumps(PROBLEM))
    problem["layers"][0]["candidates"][0]["sensitivity"] = float("nan")
    response = client.post(
        "/v1/allocate",
        headers={**tenant.headers, "Content-Type": "application/json"},
        content=json.dumps(problem),
    )
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert "sensitivity" in error["message"]


def test_time_limit_is_capped(client, tenant, settings) -> None:
    response = client.post("/v1/allocate", headers=tenant.headers, json={**PROBLEM, "time_limit": 1e6})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_time_limit"
    assert error["details"]["max"] == settings.allocate_max_time_limit


def test_empty_problem_is_a_validation_error(client, tenant) -> None:
    response = client.post("/v1/allocate", headers=tenant.headers, json={"layers": [], "budgets": {}})
    assert response.status_code == 422
    assert error_of(response)["code"] == "validation_error"
    assert "layers" in error_of(response)["message"]
