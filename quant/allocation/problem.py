"""LampQ bit allocation: turn a sensitivity table and layer costs into a solver problem and solve it.

Costs per layer and candidate ``(wbits, abits)`` (per image where it matters):
- ``size``: packed weight bytes incl. per-channel fp16 scale and zero point (0 for matmuls);
- ``bops``: MACs * wbits * abits (matmuls: MACs * abits * abits, both operands are activations);
- ``wbits``: params * wbits / total params, so the limit is the parameter-weighted average weight bits;
- ``abits``: activation elements * abits / total elements, the element-weighted average activation bits.
Matmul layers have no weights: their candidates carry ``wbits = 16`` as a placeholder.

Deployment targets (``method.target``): for ``onnxruntime-cpu`` the candidates of a layer are the forms the runtime
executes (``quant.target.forms_for``) and, with a measured latency table (``quant.deploy.onnxruntime_cpu.latency``),
every candidate also costs ``latency``: the layer's milliseconds in that form (batch 1). The user's latency budgets are whole-model
numbers, so :func:`problem_budgets` turns them into a limit on the layers' sum: ``latency`` (a fraction of the
measured fp32 model) -> ``fraction * fp32_ms - rest_ms``, ``latency_ms`` -> ``ms - rest_ms`` (``rest_ms``: softmax,
LayerNorm, GELU, adds... measured as the fp32 model minus its layers).
"""

from __future__ import annotations

from collections.abc import Callable

from solver import Candidate, Layer, Problem, SolverInputError, solve

from ..choices import candidate_pairs, fixed_pair
from ..config import LATENCY_BUDGETS, MethodSpec
from ..errors import PipelineInputError
from ..layer_costs import LayerProfile, cost_totals, layer_costs
from ..sensitivity import SensitivityTable
from ..target import form_for_bits

__all__ = [
    "build_problem",
    "check_budgets_feasible",
    "problem_budgets",
    "raise_infeasible",
    "solve_allocation",
    "user_latency",
]


def problem_budgets(budgets: dict[str, float], latency=None) -> dict[str, float]:
    """The solver's budgets for the user's ``budgets``: ``latency`` (fraction of fp32) and ``latency_ms`` (whole
    model, ms) become one ``latency`` limit on the layers' summed milliseconds; without a latency table they are
    dropped (nothing to check them against yet). Other budgets pass through."""
    out = {k: float(v) for k, v in budgets.items() if k not in LATENCY_BUDGETS}
    limits = []
    if latency is not None:
        if "latency" in budgets:
            limits.append(float(budgets["latency"]) * latency.fp32_ms - latency.rest_ms)
        if "latency_ms" in budgets:
            limits.append(float(budgets["latency_ms"]) - latency.rest_ms)
    if limits:
        limit = min(limits)
        if limit <= 0:
            rest = latency.rest_ms
            raise PipelineInputError(
                "infeasible_budget",
                f"the latency budget leaves {limit:.3f} ms for the quantizable layers: the rest of the model "
                f"(softmax, LayerNorm, GELU, adds) alone takes {rest:.3f} ms of the measured fp32 "
                f"{latency.fp32_ms:.3f} ms; raise the budget",
                {"min_achievable": {"latency_ms": rest}},
            )
        out["latency"] = limit
    return out


def user_latency(layers_ms: float, latency, key: str = "latency_ms") -> float:
    """Whole-model value of a layers-only latency sum: ``latency_ms`` -> ms, ``latency`` -> fraction of fp32."""
    total = layers_ms + latency.rest_ms
    return total / latency.fp32_ms if key == "latency" else total


def build_problem(
    profiles: dict[str, LayerProfile],
    method: MethodSpec,
    omega: Callable[[str, int, int], float] | None = None,
    latency=None,
) -> Problem:
    """The solver problem: one layer per quantization layer, candidates from ``method``, budgets from it.

    omega(layer, wbits, abits) gives the sensitivity (nats per image); None gives all zeros (feasibility only).
    latency: a ``quant.deploy.onnxruntime_cpu.latency.LatencyTable`` (target ``onnxruntime-cpu``): each candidate
    then also costs its measured milliseconds, and the latency budgets become the ``latency`` limit (:func:`problem_budgets`).
    """
    totals = cost_totals(profiles)
    layers = []
    for name, profile in profiles.items():
        kind = (profile.component, profile.params > 0)
        pairs = candidate_pairs(name, kind, method)
        fixed = fixed_pair(name, kind, method)
        candidates = []
        for w, a in pairs:
            form = form_for_bits(method.target, profile.component, w, a) if method.target != "sim" else None
            costs = layer_costs(profile, w, a, totals, form, method.block_size)
            if latency is not None:  # a latency table exists only for a runtime target, so form is set
                costs["latency"] = float(latency.ms(name, form.name))
            candidates.append(Candidate(w, a, float(omega(name, w, a)) if omega else 0.0, costs))
        layers.append(Layer(name=name, candidates=candidates, fixed=fixed))
    return Problem(layers=layers, budgets=problem_budgets(dict(method.budgets), latency))


def _solve(problem: Problem, time_limit: float):
    """``solver.solve`` with the solver's input errors (non-finite budgets or costs...) as ``invalid_budget``."""
    try:
        return solve(problem, time_limit=time_limit)
    except SolverInputError as exc:
        raise PipelineInputError("invalid_budget", f"the allocation problem is invalid: {exc}") from exc


def raise_infeasible(result, latency=None) -> None:
    """Raise ``infeasible_budget`` for an infeasible solve; the latency budget is described in whole-model
    milliseconds (the solver only sees the layers' share)."""
    minimum = {k: u.min_achievable for k, u in result.usage.items()}
    message = result.message
    if latency is not None and "latency" in result.usage:
        usage = result.usage["latency"]
        fastest = user_latency(usage.min_achievable, latency)
        minimum["latency_ms"] = fastest
        minimum["latency"] = fastest / latency.fp32_ms
        if usage.min_achievable > usage.limit:
            message = (f"the latency budget cannot be met: the fastest executable assignment takes "
                       f"{fastest:.3f} ms per image ({fastest / latency.fp32_ms:.3f} of the measured fp32 "
                       f"{latency.fp32_ms:.3f} ms) on {latency.key.get('runtime', 'this runtime')}; raise the budget "
                       f"or allow more forms")
    raise PipelineInputError("infeasible_budget", message, {"min_achievable": minimum})


def check_budgets_feasible(profiles: dict[str, LayerProfile], method: MethodSpec) -> None:
    """Raise ``PipelineInputError("infeasible_budget")`` with the minimum achievable value of each budget."""
    result = _solve(build_problem(profiles, method), 10.0)
    if result.status == "infeasible":
        minimum = {k: u.min_achievable for k, u in result.usage.items()}
        raise PipelineInputError("infeasible_budget", result.message, {"min_achievable": minimum})


def solve_allocation(table: SensitivityTable, profiles, method: MethodSpec, type_aware: bool | None = None,
                     latency=None):
    """Solve the allocation for ``table`` (and the latency table, if any); returns the solver's result (raises on
    infeasible budgets)."""
    aware = method.type_aware if type_aware is None else type_aware
    problem = build_problem(profiles, method, lambda n, w, a: table.omega(n, w, a, type_aware=aware), latency)
    result = _solve(problem, 30.0)
    if result.status == "infeasible":
        raise_infeasible(result, latency)
    if result.status not in ("optimal", "feasible"):
        raise RuntimeError(f"bit allocation failed: {result.status}: {result.message}")
    return result
