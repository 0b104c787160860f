"""Solve a bit-allocation problem synchronously with :mod:`solver` (imported lazily)."""

from __future__ import annotations

from typing import Any

from service.allocate.schemas import AllocateRequest
from service.errors import ServiceUnavailable, UnprocessableEntity
from service.jsonable import jsonable

__all__ = ["allocate", "check_time_limit"]


def check_time_limit(time_limit: float, max_time_limit: float) -> None:
    """422 ``invalid_time_limit`` when a request asks the solver for more seconds than the operator allows."""
    if time_limit > max_time_limit:
        raise UnprocessableEntity(
            f"time_limit must be at most {max_time_limit:g} seconds (operator setting MPQ_ALLOCATE_MAX_TIME_LIMIT), "
            f"got {time_limit:g}",
            code="invalid_time_limit",
            details={"max": max_time_limit},
        )


def allocate(request: AllocateRequest, *, max_time_limit: float) -> dict[str, Any]:
    """Build a :class:`solver.Problem`, solve it and return ``SolveResult.to_dict()``.

    422 ``invalid_problem`` with the solver's rule when the input breaks one; 422 ``infeasible_budget`` with the
    minimum achievable value of every budget when no assignment meets them.
    """
    check_time_limit(request.time_limit, max_time_limit)
    try:
        from solver import Candidate, Layer, Problem, SolverInputError, solve
    except ImportError as exc:  # pragma: no cover - only without the solver package
        raise ServiceUnavailable(f"the solver is not available: {exc}", code="solver_unavailable") from exc

    problem = Problem(
        layers=[
            Layer(
                name=layer.name,
                candidates=[
                    Candidate(wbits=c.wbits, abits=c.abits, sensitivity=c.sensitivity, costs=dict(c.costs))
                    for c in layer.candidates
                ],
                fixed=tuple(layer.fixed) if layer.fixed is not None else None,
                tie=layer.tie,
            )
            for layer in request.layers
        ],
        budgets=dict(request.budgets),
    )
    try:
        result = solve(problem, time_limit=request.time_limit)
    except SolverInputError as exc:
        raise UnprocessableEntity(str(exc), code="invalid_problem") from exc
    data = jsonable(result.to_dict())
    if result.status == "infeasible":
        raise UnprocessableEntity(
            result.message or "no assignment meets every budget",
            code="infeasible_budget",
            details={
                "min_achievable": {name: usage["min_achievable"] for name, usage in data["usage"].items()},
                "infeasible_budgets": data["infeasible_budgets"],
            },
        )
    return data
