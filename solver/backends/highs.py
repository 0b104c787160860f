"""HiGHS called directly through ``highspy``: the model is passed as column-wise arrays (no modelling layer).

Rows: one ``sum_o x_go = 1`` per group, then one ``sum c_go,k / scale_k * x_go <= rhs_k / scale_k`` per
budget. The objective is shifted and scaled by :mod:`solver.backends.scaling` so that HiGHS's absolute
tolerances stay ~1e-9 of the answer even when sensitivities spread over many decades.
Single thread, so runs are deterministic. HiGHS's thread scheduler is global to the process: once anything else
in the process has run HiGHS with another thread count (e.g. ``pulp.HiGHS(threads=4)``), a run asking for one
thread fails with model status "Not Set". :func:`run_model` then re-runs on the scheduler that exists
(``threads = 0``); a run that still fails is reported as ``"error"`` and :mod:`solver.backends` falls back to
CBC. Tolerances: the MIP feasibility tolerance is 1e-9 (on rows scaled
to O(1), i.e. relative to the limit); the LP primal tolerance stays at its default. :mod:`solver.general` checks
every returned assignment exactly anyway and re-solves with tightened limits if a budget slipped.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import highspy
import numpy as np

from ..compile import Group
from .base import LPOutcome, MIPOutcome
from .scaling import ObjectiveScaling, scale_objective

__all__ = ["HighsBackend", "run_model"]


def run_model(h: highspy.Highs) -> highspy.HighsModelStatus:
    """Run ``h``; when the process-global scheduler was started by someone else with another thread count (the
    run fails with status "Not Set"), run again on that scheduler. Returns the model status."""
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kNotset:
        h.setOptionValue("threads", 0)  # 0: use the scheduler as it is
        h.run()
        status = h.getModelStatus()
    return status


def _build(
    groups: Sequence[Group],
    rhs: Sequence[float],
    scale: Sequence[float],
    obj: ObjectiveScaling,
    integer: bool,
) -> highspy.Highs:
    m = len(rhs)
    n_groups = len(groups)
    sizes = np.fromiter((len(g.sens) for g in groups), dtype=np.int64, count=n_groups)
    n = int(sizes.sum())
    cost = np.fromiter(itertools.chain.from_iterable(obj.costs), dtype=np.float64, count=n)
    inv = np.asarray([1.0 / s for s in scale], dtype=np.float64)
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(g.costs for g in groups))
    budget = np.fromiter(flat, dtype=np.float64, count=n * m).reshape(n, m) * inv
    # column-wise entries: the group's row (coefficient 1), then each budget row with a nonzero cost
    rows = np.empty((n, m + 1), dtype=np.int32)
    rows[:, 0] = np.repeat(np.arange(n_groups, dtype=np.int32), sizes)
    rows[:, 1:] = n_groups + np.arange(m, dtype=np.int32)
    values = np.empty((n, m + 1), dtype=np.float64)
    values[:, 0] = 1.0
    values[:, 1:] = budget
    mask = np.ones((n, m + 1), dtype=bool)
    mask[:, 1:] = budget != 0.0
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = n_groups + m
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(n)
    lp.col_upper_ = np.ones(n)
    lp.row_lower_ = np.concatenate([np.ones(n_groups), np.full(m, -highspy.kHighsInf)])
    lp.row_upper_ = np.concatenate([np.ones(n_groups), np.asarray(rhs, dtype=np.float64) * inv])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.concatenate(([0], np.cumsum(mask.sum(axis=1)))).astype(np.int32)
    lp.a_matrix_.index_ = rows[mask]
    lp.a_matrix_.value_ = values[mask]
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * n
    h = highspy.Highs()
    h.silent()
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    # With the default 1e-6 an assignment could exceed a budget by 1e-6 of its limit (seen on Swin-B). The primal
    # (LP) tolerance stays at its default: setting it to 1e-10 made HiGHS 1.15 prune the optimum of a
    # ViT-L-sized instance after a restart (a wrong "optimal"); bench cross-checks against plain HiGHS runs.
    h.setOptionValue("mip_feasibility_tolerance", 1e-9)
    h.passModel(lp)
    return h


def _split(groups: Sequence[Group], values: Sequence[float]) -> list[list[float]]:
    out = []
    pos = 0
    for g in groups:
        k = len(g.sens)
        out.append(list(values[pos : pos + k]))
        pos += k
    return out


class HighsBackend:
    """Backend on HiGHS (``highspy``)."""

    name = "highs"

    def solve_lp(
        self, groups: Sequence[Group], rhs: Sequence[float], scale: Sequence[float], time_limit: float | None
    ) -> LPOutcome:
        started = time.perf_counter()
        obj = scale_objective(groups)
        h = _build(groups, rhs, scale, obj, integer=False)
        # presolve does little for this LP and does not look at the clock (0.3 s limit -> 0.6 s at 5000 layers)
        h.setOptionValue("presolve", "off")
        if time_limit is not None:  # the limit counts from this call, model building included
            h.setOptionValue("time_limit", max(float(time_limit) - (time.perf_counter() - started), 1e-3))
        status = run_model(h)
        if status == highspy.HighsModelStatus.kInfeasible:
            return LPOutcome("infeasible")
        if status in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt):
            return LPOutcome("stopped", message="HiGHS LP stopped by the time limit")
        if status != highspy.HighsModelStatus.kOptimal:
            return LPOutcome("error", message=f"HiGHS LP status {h.modelStatusToString(status)}")
        sol = h.getSolution()
        duals = list(sol.row_dual)[len(groups) :]
        lam = tuple(max(0.0, -d) * obj.scale / s for d, s in zip(duals, scale))
        return LPOutcome("optimal", lam=lam, x=_split(groups, list(sol.col_value)))

    def solve_mip(
        self,
        groups: Sequence[Group],
        rhs: Sequence[float],
        scale: Sequence[float],
        *,
        offset: float,
        incumbent: Sequence[int] | None,
        time_limit: float | None,
        mip_gap: float,
    ) -> MIPOutcome:
        started = time.perf_counter()
        obj = scale_objective(groups, incumbent)
        h = _build(groups, rhs, scale, obj, integer=True)
        h.changeObjectiveOffset((offset + obj.shift) / obj.scale)
        h.setOptionValue("mip_rel_gap", float(mip_gap))
        h.setOptionValue("mip_abs_gap", 0.0)
        if time_limit is not None:
            h.setOptionValue("time_limit", max(float(time_limit) - (time.perf_counter() - started), 1e-3))
        if incumbent is not None:
            # With a good start, HiGHS's own primal heuristics mostly cost time (measured in bench/solver.py).
            h.setOptionValue("mip_heuristic_effort", 0.0)
            values = np.zeros(sum(len(g.sens) for g in groups))
            pos = 0
            for g, o in zip(groups, incumbent):
                values[pos + o] = 1.0
                pos += len(g.sens)
            sol = highspy.HighsSolution()
            sol.col_value = values
            sol.value_valid = True
            h.setSolution(sol)
        status = run_model(h)
        info = h.getInfo()
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        bound = info.mip_dual_bound * obj.scale if np.isfinite(info.mip_dual_bound) else None
        if status == highspy.HighsModelStatus.kInfeasible:
            return MIPOutcome("infeasible")
        choice = None
        if has_solution:
            values = list(h.getSolution().col_value)
            choice = [max(range(len(xs)), key=lambda i: xs[i]) for xs in _split(groups, values)]
        if status == highspy.HighsModelStatus.kOptimal and choice is not None:
            exact = mip_gap == 0.0 or (bound is not None and info.mip_gap <= 0.0)
            return MIPOutcome("optimal" if exact else "feasible", choice, bound)
        text = h.modelStatusToString(status)
        if choice is not None:
            return MIPOutcome("feasible", choice, bound, message=f"HiGHS stopped: {text}")
        if status in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt):
            return MIPOutcome("no_solution", None, bound, message=f"HiGHS stopped: {text}")
        return MIPOutcome("error", message=f"HiGHS status {text}")
