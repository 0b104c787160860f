"""``pareto_sweep``: solve one problem for many limits of one budget, reusing work between points."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .api import check_options, prepare, to_result
from .backends import get_backend
from .engine import deadline_for, solve_prepared
from .errors import SolverInputError
from .problem import Problem
from .result import SolveResult
from .validate import check_limit

__all__ = ["pareto_sweep"]

_OPTIONS = ("time_limit", "backend", "mip_gap")


def pareto_sweep(
    problem: Problem, budget: str, values: Sequence[float], **solve_kwargs: Any
) -> list[SolveResult]:
    """Solve ``problem`` once per value of ``problem.budgets[budget]``; results come back in ``values`` order.

    The problem is validated, compiled and pruned once. Points are solved from the tightest limit up, each
    starting from the previous point's assignment (still feasible under a looser limit), which makes the
    incumbent and hence reduced-cost fixing strong from the start. ``solve_kwargs`` are :func:`solver.solve`'s
    options; ``time_limit`` applies to each point. With every point optimal, the objective is non-increasing in
    the limit.
    """
    unknown = sorted(set(solve_kwargs) - set(_OPTIONS))
    if unknown:
        raise SolverInputError(
            f"pareto_sweep: unknown solve option {unknown[0]!r} (allowed: {', '.join(_OPTIONS)})"
        )
    time_limit = solve_kwargs.get("time_limit", 10.0)
    backend = solve_kwargs.get("backend", "auto")
    mip_gap = solve_kwargs.get("mip_gap", 0.0)
    check_options(time_limit, backend, mip_gap)
    prep = prepare(problem)
    names = prep.raw.budget_names
    if budget not in names:
        raise SolverInputError(
            f"pareto_sweep: budget {budget!r} is not one of the problem's budgets {list(names)}"
        )
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise SolverInputError(
            f"pareto_sweep: values must be a sequence of limits, got {type(values).__name__}"
        )
    for v in values:
        check_limit(budget, v)
    k = names.index(budget)
    results: list[SolveResult | None] = [None] * len(values)
    hint = None
    cache: dict[str, Any] = {}

    def backend_once() -> Any:
        if "b" not in cache:
            cache["b"] = get_backend(backend)
        return cache["b"]

    for i in sorted(range(len(values)), key=lambda i: (float(values[i]), i)):
        started = time.perf_counter()
        limits = tuple(float(values[i]) if j == k else b for j, b in enumerate(prep.raw.limits))
        point = prep.with_limits(limits)
        out = solve_prepared(
            point, backend_once, deadline=deadline_for(time_limit), mip_gap=float(mip_gap), hint=hint
        )
        if out.choice is not None:
            hint = out.choice
        results[i] = to_result(problem, point, out, started)
    return [r for r in results if r is not None]
