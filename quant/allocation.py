"""LampQ bit allocation: turn a sensitivity table and layer costs into a solver problem, solve, iterate.

Costs per layer and candidate ``(wbits, abits)`` (per image where it matters):
- ``size``: packed weight bytes incl. per-channel fp16 scale and zero point (0 for matmuls);
- ``bops``: MACs * wbits * abits (matmuls: MACs * abits * abits, both operands are activations);
- ``wbits``: params * wbits / total params, so the limit is the parameter-weighted average weight bits;
- ``abits``: activation elements * abits / total elements, the element-weighted average activation bits.
Matmul layers have no weights: their candidates carry ``wbits = 16`` as a placeholder.

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

from .config import MethodSpec, PipelineConfig
from .errors import PipelineInputError
from .evaluate import predict_logits
from .profile import LayerProfile, cost_totals, layer_costs
from .quantizers import FLOAT_BITS
from .sensitivity import SensitivityTable, measure_kl
from .wrap import quant_layers, set_bits_, set_quant_enabled_

__all__ = ["allocate_stage", "build_problem", "check_budgets_feasible", "measure_layer_kl", "solve_allocation"]

_FACTOR_RANGE = (0.25, 4.0)


def _candidate_pairs(profile: LayerProfile, method: MethodSpec) -> list[tuple[int, int]]:
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


def build_problem(
    profiles: dict[str, LayerProfile],
    method: MethodSpec,
    omega: Callable[[str, int, int], float] | None = None,
) -> Problem:
    """The solver problem: one layer per quantization layer, candidates from ``method``, budgets from it.

    omega(layer, wbits, abits) gives the sensitivity (nats per image); None gives all zeros (feasibility only).
    """
    totals = cost_totals(profiles)
    layers = []
    for name, profile in profiles.items():
        pairs = _candidate_pairs(profile, method)
        fixed = _fixed_pair(name, profile, method)
        if fixed is not None and fixed not in pairs:
            pairs.append(fixed)
        candidates = [
            Candidate(w, a, float(omega(name, w, a)) if omega else 0.0, layer_costs(profile, w, a, totals))
            for w, a in pairs
        ]
        layers.append(Layer(name=name, candidates=candidates, fixed=fixed))
    return Problem(layers=layers, budgets=dict(method.budgets))


def _solve(problem: Problem, time_limit: float):
    """``solver.solve`` with the solver's input errors (non-finite budgets or costs...) as ``invalid_budget``."""
    try:
        return solve(problem, time_limit=time_limit)
    except SolverInputError as exc:
        raise PipelineInputError("invalid_budget", f"the allocation problem is invalid: {exc}") from exc


def check_budgets_feasible(profiles: dict[str, LayerProfile], method: MethodSpec) -> None:
    """Raise ``PipelineInputError("infeasible_budget")`` with the minimum achievable value of each budget."""
    result = _solve(build_problem(profiles, method), 10.0)
    if result.status == "infeasible":
        minimum = {k: u.min_achievable for k, u in result.usage.items()}
        raise PipelineInputError("infeasible_budget", result.message, {"min_achievable": minimum})


def solve_allocation(table: SensitivityTable, profiles, method: MethodSpec, type_aware: bool | None = None):
    """Solve the allocation for ``table``; returns the solver's result (raises on infeasible budgets)."""
    aware = method.type_aware if type_aware is None else type_aware
    problem = build_problem(profiles, method, lambda n, w, a: table.omega(n, w, a, type_aware=aware))
    result = _solve(problem, 30.0)
    if result.status == "infeasible":
        minimum = {k: u.min_achievable for k, u in result.usage.items()}
        raise PipelineInputError("infeasible_budget", result.message, {"min_achievable": minimum})
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
                   progress) -> dict:
    """Pipeline stage: solve (and iteratively correct) the bit allocation; returns a JSON-able dict."""
    method = config.method
    table = SensitivityTable.from_dict(sensitivity_out["table"])
    result = solve_allocation(table, profiles, method)
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
        result = solve_allocation(table, profiles, method)
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
    return {
        "allocation": allocation,
        "budgets": budgets,
        "predicted_loss": result.objective,
        "solver": {"status": result.status, "optimal": result.optimal, "gap": result.gap,
                   "solve_time": result.solve_time, "backend": result.backend},
        "rounds": rounds,
        "layer_factors": table.layer_factors,
        "mode": "mixed",
    }
