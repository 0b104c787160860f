"""Pareto sweeps of a bit allocation: predicted loss against one budget, over a range of limits.

A sweep solves the allocation problem of a job (its sensitivity table, layer costs and, for ``onnxruntime-cpu``,
its measured latency table) once per limit of one budget, with the job's other budgets kept. Limits are spread
evenly between the smallest achievable cost and the cost of the least sensitive assignment (beyond which the
budget no longer binds). Values are in the budget's user units: ``wbits``/``abits`` average bits, ``size`` bytes,
``bops`` bit-operations per image, ``latency_ms`` milliseconds per image for the whole model, ``latency`` a
fraction of the measured fp32 model.

Used by the allocate stage (``method.sweep``) and by ``POST /v1/jobs/{id}/pareto`` (:func:`pareto_from_stages`)
without touching the model: everything comes from stored stage outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from solver import Problem, SolverInputError, pareto_sweep

from ..config import BUDGET_KEYS, LATENCY_BUDGETS, MethodSpec
from ..errors import PipelineInputError
from ..layer_costs import LayerProfile
from ..sensitivity import SensitivityTable
from ..target import form_for_bits
from .problem import build_problem, user_latency

__all__ = ["BUDGET_UNITS", "pareto_from_stages", "sweep_problem"]

#: Unit of each budget's values in a sweep.
BUDGET_UNITS = {"wbits": "average weight bits", "abits": "average activation bits", "size": "bytes",
                "bops": "bit-operations per image", "latency_ms": "ms per image (batch 1)",
                "latency": "fraction of the measured fp32 latency"}


def _solver_budget(budget: str) -> str:
    return "latency" if budget in LATENCY_BUDGETS else budget


def _range(problem: Problem, name: str) -> tuple[float, float]:
    """(smallest achievable, least-sensitive assignment's) total cost of ``name`` over the problem's layers."""
    low = high = 0.0
    for layer in problem.layers:
        candidates = [c for c in layer.candidates if layer.fixed is None or c.pair == tuple(layer.fixed)]
        costs = [float(c.costs.get(name, 0.0)) for c in candidates]
        low += min(costs)
        best = min(c.sensitivity for c in candidates)
        high += min(float(c.costs.get(name, 0.0)) for c in candidates if c.sensitivity <= best + 1e-15)
    if high <= low:
        high = sum(max(float(c.costs.get(name, 0.0)) for c in layer.candidates) for layer in problem.layers)
    return low, max(high, low)


def _to_user(value: float, budget: str, latency) -> float:
    return user_latency(value, latency, budget) if budget in LATENCY_BUDGETS else value


def _from_user(value: float, budget: str, latency) -> float:
    if budget == "latency":
        return value * latency.fp32_ms - latency.rest_ms
    if budget == "latency_ms":
        return value - latency.rest_ms
    return value


def sweep_problem(
    profiles: dict[str, LayerProfile],
    method: MethodSpec,
    omega: Callable[[str, int, int], float],
    latency=None,
    *,
    budget: str,
    points: int = 32,
    values: Sequence[float] | None = None,
    chosen_objective: float | None = None,
    time_limit: float = 5.0,
    measure: int = 0,
) -> list[dict]:
    """Solve the allocation once per limit of ``budget`` (user units, see the module doc).

    values: the limits; None spreads ``points`` limits over the useful range. The job's own limit of ``budget``
    (when it has one) is added and marked ``chosen``. Returns points sorted by value: ``{"budget", "value",
    "objective" (nats per image, predicted), "status", "predicted_latency_ms", "wbits_avg", "forms", "chosen"}``;
    infeasible limits are returned with ``objective`` None. measure: this many feasible points besides the chosen
    one, evenly spread, keep their ``assignment`` (``{layer: [wbits, abits]}``) so they can be exported and
    measured.
    """
    if budget not in BUDGET_KEYS:
        raise PipelineInputError("invalid_budget", f"unknown budget {budget!r}; budgets are {', '.join(BUDGET_KEYS)}")
    if budget in LATENCY_BUDGETS and latency is None:
        raise PipelineInputError("invalid_budget", f"budget {budget!r} needs a latency table: only jobs with target "
                                 "onnxruntime-cpu measure one")
    key = _solver_budget(budget)
    problem = build_problem(profiles, method, omega, latency)
    budgets = dict(problem.budgets)
    own_limit = budgets.get(key)
    budgets.setdefault(key, 1e300)  # the swept limit replaces it at every point
    problem = Problem(layers=problem.layers, budgets=budgets)
    low, high = _range(problem, key)
    if values is None:
        count = max(int(points), 2)
        solver_values = [low + (high - low) * i / (count - 1) for i in range(count)]
    else:
        solver_values = [_from_user(float(v), budget, latency) for v in values]
    chosen_value = own_limit
    if chosen_value is not None:
        solver_values.append(chosen_value)
    solver_values = [max(v, 1e-12) for v in solver_values]
    try:
        results = pareto_sweep(problem, key, solver_values, time_limit=time_limit)
    except SolverInputError as exc:
        raise PipelineInputError("invalid_budget", f"the sweep is invalid: {exc}") from exc
    components = {name: p.component for name, p in profiles.items()}
    params = sum(p.params for p in profiles.values()) or 1
    out = []
    for index, (value, result) in enumerate(zip(solver_values, results)):
        chosen = chosen_value is not None and index == len(solver_values) - 1
        point = {"budget": budget, "value": _to_user(value, budget, latency), "status": result.status,
                 "objective": result.objective, "chosen": chosen, "predicted_latency_ms": None,
                 "wbits_avg": None, "forms": None}
        if chosen and chosen_objective is not None and result.objective is not None:
            point["objective"] = min(result.objective, chosen_objective)
        if result.assignment:
            point["wbits_avg"] = sum(profiles[n].params * w for n, (w, _a) in result.assignment.items()) / params
            if latency is not None:
                forms = {n: form_for_bits(method.target, components[n], w, a).name
                         for n, (w, a) in result.assignment.items()}
                point["predicted_latency_ms"] = latency.predict(forms)
                point["forms"] = dict(Counter(forms.values()))
        point["assignment"] = {n: list(pair) for n, pair in result.assignment.items()}
        out.append(point)
    out.sort(key=lambda p: (p["value"], not p["chosen"]))
    keep = _spread([i for i, p in enumerate(out) if p["assignment"] and not p["chosen"]], measure)
    for index, point in enumerate(out):
        if index not in keep:
            point.pop("assignment")
    return out


def _spread(indices: list[int], count: int) -> set[int]:
    """``count`` of ``indices`` evenly spread (both ends included when count >= 2)."""
    if count <= 0 or not indices:
        return set()
    if count >= len(indices):
        return set(indices)
    if count == 1:
        return {indices[len(indices) // 2]}
    return {indices[round(k * (len(indices) - 1) / (count - 1))] for k in range(count)}


def pareto_from_stages(
    stages: dict[str, dict],
    method: MethodSpec,
    budget: str,
    *,
    points: int = 32,
    values: Sequence[float] | None = None,
    time_limit: float = 5.0,
) -> dict:
    """A sweep over a finished job's stored stage outputs (``sensitivity``, ``allocate``, optional ``latency``).

    Returns ``{"budget", "unit", "points": [...] (see :func:`sweep_problem`), "chosen": value or None}``. Raises
    ``PipelineInputError("sensitivity_unavailable")`` for a job without a sensitivity table and layer profiles,
    ``invalid_budget`` for a budget it cannot sweep.
    """
    from ..deploy.onnxruntime_cpu.latency import LatencyTable

    sensitivity, allocation = stages.get("sensitivity"), stages.get("allocate")
    if not sensitivity or sensitivity.get("skipped") or "table" not in sensitivity or not allocation \
            or "profiles" not in allocation:
        raise PipelineInputError("sensitivity_unavailable",
                                 "this job has no stored sensitivity table and layer costs to sweep: only "
                                 "mixed-precision jobs (with budgets) that finished their allocate stage have them")
    if not 2 <= int(points) <= 256:
        raise PipelineInputError("invalid_budget", f"points must be between 2 and 256, got {points}")
    table = SensitivityTable.from_dict(sensitivity["table"])
    table.layer_factors.update(allocation.get("layer_factors") or {})
    profiles = {name: LayerProfile(**p) for name, p in allocation["profiles"].items()}
    latency_out = stages.get("latency") or {}
    latency = LatencyTable.from_dict(latency_out["table"]) if latency_out.get("table") else None
    result = sweep_problem(
        profiles, method, lambda n, w, a: table.omega(n, w, a, type_aware=method.type_aware), latency,
        budget=budget, points=points, values=values, time_limit=time_limit,
    )
    chosen = next((p["value"] for p in result if p["chosen"]), None)
    return {"budget": budget, "unit": BUDGET_UNITS[budget], "points": result, "chosen": chosen}
