"""Pipeline adapter: the ``allocate`` stage (mixed precision: solve, iterate, sweep; uniform: the job's pairs)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..calibration import ParamTable
from ..choices import table_pairs
from ..config import PipelineConfig
from ..sensitivity import SensitivityTable
from ..target import form_for_bits
from ..wrap import quant_layers
from .iterative import LayerKL, iterate
from .pareto import sweep_problem
from .problem import solve_allocation, user_latency

__all__ = ["allocate_stage", "uniform_allocation"]


def _with_forms(allocation: dict[str, dict], components: dict[str, str], target: str, latency) -> dict:
    """Each entry with its form name (runtime targets) and the predicted latency of the whole assignment."""
    forms = {n: form_for_bits(target, components[n], e["wbits"], e["abits"]).name for n, e in allocation.items()}
    return {"allocation": {n: {**e, "form": forms[n]} for n, e in allocation.items()},
            "predicted_latency_ms": latency.predict(forms)}


def uniform_allocation(qmodel: nn.Module, config: PipelineConfig, latency=None) -> dict:
    """Stage output of a uniform-precision job: every layer at its single table pair."""
    layers = quant_layers(qmodel)
    kinds = {n: (layer.component, layer.has_weight) for n, layer in layers.items()}
    pairs = {n: p[0] for n, p in table_pairs(kinds, config.method).items()}
    allocation = {n: {"wbits": w, "abits": a} for n, (w, a) in pairs.items()}
    out = {"allocation": allocation, "budgets": {}, "mode": "uniform"}
    if latency is not None:
        out.update(_with_forms(allocation, {n: k[0] for n, k in kinds.items()}, config.method.target, latency))
    return out


def allocate_stage(qmodel: nn.Module, table: ParamTable, calib, profiles, sensitivity_out: dict,
                   config: PipelineConfig, progress: Callable[[float], None], latency=None) -> dict:
    """Solve (and iteratively correct) the bit allocation over the table's candidates; a JSON-able dict.

    latency: the job's ``quant.deploy.onnxruntime_cpu.latency.LatencyTable`` (target ``onnxruntime-cpu``), else
    None. With ``method.sweep`` the stage also solves the Pareto curve of one budget (``quant.allocation.pareto``).
    The model is only used to measure (its layers' params are restored).
    """
    method = config.method
    sens = SensitivityTable.from_dict(sensitivity_out["table"])
    layer_kl = LayerKL(qmodel, table, calib.images)
    result, rounds = iterate(lambda: solve_allocation(sens, profiles, method, latency=latency), sens, layer_kl,
                             method.iterative_rounds, method.type_aware, progress)
    allocation = {n: {"wbits": int(w), "abits": int(a)} for n, (w, a) in result.assignment.items()}
    budgets = {k: {"limit": u.limit, "used": u.used, "min_achievable": u.min_achievable}
               for k, u in result.usage.items()}
    out = {
        "allocation": allocation,
        "budgets": budgets,
        "predicted_loss": result.objective,
        "solver": {"status": result.status, "optimal": result.optimal, "gap": result.gap,
                   "solve_time": result.solve_time, "backend": result.backend},
        "rounds": rounds,
        "layer_factors": sens.layer_factors,
        "profiles": {name: p.to_dict() for name, p in profiles.items()},
        "mode": "mixed",
    }
    if latency is not None:
        out.update(_with_forms(allocation, sens.components, method.target, latency))
        if "latency" in budgets:
            usage = budgets.pop("latency")
            budgets["latency_ms"] = {
                "limit": user_latency(usage["limit"], latency),
                "used": None if usage["used"] is None else user_latency(usage["used"], latency),
                "min_achievable": user_latency(usage["min_achievable"], latency),
            }
    if method.sweep:
        def omega(n, w, a):
            return sens.omega(n, w, a, type_aware=method.type_aware)

        out["pareto"] = sweep_problem(profiles, method, omega, latency, points=method.sweep,
                                      budget=method.sweep_budget or next(iter(method.budgets)),
                                      chosen_objective=result.objective,
                                      measure=method.sweep_measure if config.export_onnx and latency is not None
                                      else 0)
    return out
