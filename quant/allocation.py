"""LampQ bit allocation: turn a sensitivity table and layer costs into a solver problem, solve, iterate.

Costs per layer and candidate ``(wbits, abits)`` (per image where it matters):
- ``size``: packed weight bytes incl. per-channel fp16 scale and zero point (0 for matmuls);
- ``bops``: MACs * wbits * abits (matmuls: MACs * abits * abits, both operands are activations);
- ``wbits``: params * wbits / total params, so the limit is the parameter-weighted average weight bits;
- ``abits``: activation elements * abits / total elements, the element-weighted average activation bits.
Matmul layers have no weights: their candidates carry ``wbits = 16`` as a placeholder.

Deployment targets (``method.target``): for ``onnxruntime-cpu`` the candidates of a layer are the forms the runtime
executes (``quant.target.forms_for``) and, with a measured latency table (``quant.latency``), every candidate also
costs ``latency``: the layer's milliseconds in that form (batch 1). The user's latency budgets are whole-model
numbers, so :func:`problem_budgets` turns them into a limit on the layers' sum: ``latency`` (a fraction of the
measured fp32 model) -> ``fraction * fp32_ms - rest_ms``, ``latency_ms`` -> ``ms - rest_ms`` (``rest_ms``: softmax,
LayerNorm, GELU, adds... measured as the fp32 model minus its layers).

Iterative update (``iterative_rounds``): quantize the model with the assignment, measure for each layer the KL
to float when only that layer is quantized at its assigned bits, compare with the predicted Omega, fold the
damped ratio (geometric mean with the previous factor, clamped to [0.25, 4]) into a per-layer factor and solve
again; stop when the assignment no longer changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from solver import Candidate, Layer, Problem, SolverInputError, solve

from .config import LATENCY_BUDGETS, MethodSpec, PipelineConfig
from .errors import PipelineInputError
from .evaluate import predict_logits
from .profile import LayerProfile, cost_totals, layer_costs
from .quantizers import FLOAT_BITS
from .sensitivity import SensitivityTable, measure_kl
from .target import form_for_bits, forms_for
from .wrap import forms_of, quant_layers, set_bits_, set_quant_enabled_

__all__ = [
    "allocate_stage",
    "build_problem",
    "check_budgets_feasible",
    "measure_layer_kl",
    "problem_budgets",
    "solve_allocation",
    "user_latency",
]

_FACTOR_RANGE = (0.25, 4.0)


def _candidate_pairs(profile: LayerProfile, method: MethodSpec) -> list[tuple[int, int]]:
    if method.target != "sim":
        return [(f.wbits, f.abits) for f in forms_for(method.target, profile.component, method.forms)]
    if profile.params == 0:
        return [(FLOAT_BITS, a) for a in method.candidate_abits]
    return [(w, a) for w in method.candidate_wbits for a in method.candidate_abits]


def _fixed_pair(name: str, profile: LayerProfile, method: MethodSpec) -> tuple[int, int] | None:
    fixed = method.fixed_layers.get(name)
    if fixed is None and method.head_bits is not None and profile.component in ("patch_embed", "head"):
        fixed = (method.head_bits, method.head_bits)
    if fixed is None:
        return None
    return (FLOAT_BITS, int(fixed[1])) if profile.params == 0 else (int(fixed[0]), int(fixed[1]))


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
    latency: a ``quant.latency.LatencyTable`` (target ``onnxruntime-cpu``): each candidate then also costs its
    measured milliseconds, and the latency budgets become the ``latency`` limit (:func:`problem_budgets`).
    """
    totals = cost_totals(profiles)
    layers = []
    for name, profile in profiles.items():
        pairs = _candidate_pairs(profile, method)
        fixed = _fixed_pair(name, profile, method)
        if fixed is not None and fixed not in pairs:
            pairs.append(fixed)
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


def _apply(qmodel: nn.Module, assignment: dict[str, tuple[int, int]]) -> None:
    layers = quant_layers(qmodel)
    set_bits_(qmodel, {n: (w if layers[n].has_weight else FLOAT_BITS, a) for n, (w, a) in assignment.items()})


@torch.no_grad()
def measure_layer_kl(qmodel: nn.Module, images: torch.Tensor, assignment: dict[str, tuple[int, int]],
                     batch_size: int = 64) -> dict[str, float]:
    """KL to float (nats per image) when only one layer at a time is quantized at its assigned bits."""
    layers = quant_layers(qmodel)
    _apply(qmodel, assignment)
    set_quant_enabled_(qmodel, False, False)
    float_logits = predict_logits(qmodel, images, batch_size)
    measured = {}
    for name, layer in layers.items():
        layer.set_quant_enabled(True, True)
        measured[name] = measure_kl(qmodel, images, float_logits, batch_size)
        layer.set_quant_enabled(False, False)
    set_quant_enabled_(qmodel, True, True)
    return measured


def allocate_stage(qmodel, float_model, calib, profiles, sensitivity_out: dict, config: PipelineConfig,
                   progress, latency=None) -> dict:
    """Pipeline stage: solve (and iteratively correct) the bit allocation; returns a JSON-able dict.

    latency: the job's ``quant.latency.LatencyTable`` (target ``onnxruntime-cpu``), else None. With
    ``method.sweep`` the stage also solves the Pareto curve of one budget (``quant.pareto``).
    """
    from .pareto import sweep_problem

    method = config.method
    table = SensitivityTable.from_dict(sensitivity_out["table"])
    result = solve_allocation(table, profiles, method, latency=latency)
    rounds = [{"round": 0, "objective": result.objective, "solve_time": result.solve_time}]
    subset = calib.images[:32]
    for round_index in range(1, method.iterative_rounds + 1):
        assignment = dict(result.assignment)
        measured = measure_layer_kl(qmodel, subset, assignment)
        for name, (w, a) in assignment.items():
            predicted = table.omega(name, w, a, type_aware=method.type_aware)
            if predicted <= 1e-12 or measured[name] <= 0:
                continue
            ratio = (table.layer_factors.get(name, 1.0) ** 2 * measured[name] / predicted) ** 0.5
            table.layer_factors[name] = float(min(max(ratio, _FACTOR_RANGE[0]), _FACTOR_RANGE[1]))
        result = solve_allocation(table, profiles, method, latency=latency)
        changed = sum(result.assignment[n] != assignment[n] for n in assignment)
        rounds.append({"round": round_index, "objective": result.objective, "changed_layers": changed,
                       "solve_time": result.solve_time})
        progress(round_index / max(method.iterative_rounds, 1))
        if changed == 0:
            break
    _apply(qmodel, dict(result.assignment))
    layers = quant_layers(qmodel)
    allocation = {n: {"wbits": layers[n].wbits, "abits": layers[n].abits} for n in layers}
    budgets = {k: {"limit": u.limit, "used": u.used, "min_achievable": u.min_achievable}
               for k, u in result.usage.items()}
    out = {
        "allocation": allocation,
        "budgets": budgets,
        "predicted_loss": result.objective,
        "solver": {"status": result.status, "optimal": result.optimal, "gap": result.gap,
                   "solve_time": result.solve_time, "backend": result.backend},
        "rounds": rounds,
        "layer_factors": table.layer_factors,
        "profiles": {name: p.to_dict() for name, p in profiles.items()},
        "mode": "mixed",
    }
    if latency is not None:
        forms = forms_of(qmodel)  # the assignment was applied above
        allocation_forms = {n: {**allocation[n], "form": forms[n]} for n in allocation}
        out["allocation"] = allocation_forms
        out["predicted_latency_ms"] = latency.predict(forms)
        if "latency" in budgets:
            usage = budgets.pop("latency")
            budgets["latency_ms"] = {
                "limit": user_latency(usage["limit"], latency),
                "used": None if usage["used"] is None else user_latency(usage["used"], latency),
                "min_achievable": user_latency(usage["min_achievable"], latency),
            }
    if method.sweep:
        omega = lambda n, w, a: table.omega(n, w, a, type_aware=method.type_aware)
        out["pareto"] = sweep_problem(profiles, method, omega, latency, points=method.sweep,
                                      budget=method.sweep_budget or next(iter(method.budgets)),
                                      chosen_objective=result.objective,
                                      measure=method.sweep_measure if config.export_onnx and latency is not None
                                      else 0)
    return out
