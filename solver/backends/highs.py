"""HiGHS called directly through ``highspy``: the model is passed as column-wise arrays (no modelling layer).

Rows: one ``sum_o x_go = 1`` per group, then one ``sum c_go,k / scale_k * x_go <= rhs_k / scale_k`` per
budget. The objective is divided by the largest |sensitivity| so that HiGHS's tolerances act on O(1) numbers.
Single thread, so runs are deterministic. Tolerances: the MIP feasibility tolerance is 1e-9 (on rows scaled
to O(1), i.e. relative to the limit); the LP primal tolerance stays at its default. :mod:`solver.general` checks
every returned assignment exactly anyway and re-solves with tightened limits if a budget slipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import highspy
import numpy as np

from ..compile import Group
from .base import LPOutcome, MIPOutcome

__all__ = ["HighsBackend"]


def _obj_scale(groups: Sequence[Group]) -> float:
    top = max((abs(s) for g in groups for s in g.sens), default=0.0)
    return top if top > 0.0 else 1.0


def _build(
    groups: Sequence[Group], rhs: Sequence[float], scale: Sequence[float], obj_scale: float, integer: bool
) -> highspy.Highs:
    m = len(rhs)
    n_groups = len(groups)
    cost: list[float] = []
    start = [0]
    index: list[int] = []
    value: list[float] = []
    inv = [1.0 / s for s in scale]
    rows = range(m)
    for gi, g in enumerate(groups):
        for s, c in zip(g.sens, g.costs):
            cost.append(s / obj_scale)
            index.append(gi)
            value.append(1.0)
            for k in rows:
                if c[k] != 0.0:
                    index.append(n_groups + k)
                    value.append(c[k] * inv[k])
            start.append(len(index))
    n = len(cost)
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = n_groups + m
    lp.col_cost_ = np.asarray(cost, dtype=np.float64)
    lp.col_lower_ = np.zeros(n)
    lp.col_upper_ = np.ones(n)
    lp.row_lower_ = np.concatenate([np.ones(n_groups), np.full(m, -highspy.kHighsInf)])
    lp.row_upper_ = np.concatenate(
        [np.ones(n_groups), np.asarray([r * i for r, i in zip(rhs, inv)], dtype=np.float64)]
    )
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.asarray(start, dtype=np.int32)
    lp.a_matrix_.index_ = np.asarray(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.asarray(value, dtype=np.float64)
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
        obj_scale = _obj_scale(groups)
        h = _build(groups, rhs, scale, obj_scale, integer=False)
        if time_limit is not None:
            h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
        h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kInfeasible:
            return LPOutcome("infeasible")
        if status != highspy.HighsModelStatus.kOptimal:
            return LPOutcome("error", message=f"HiGHS LP status {h.modelStatusToString(status)}")
        sol = h.getSolution()
        duals = list(sol.row_dual)[len(groups) :]
        lam = tuple(max(0.0, -d) * obj_scale / s for d, s in zip(duals, scale))
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
        obj_scale = _obj_scale(groups)
        h = _build(groups, rhs, scale, obj_scale, integer=True)
        h.changeObjectiveOffset(offset / obj_scale)
        h.setOptionValue("mip_rel_gap", float(mip_gap))
        h.setOptionValue("mip_abs_gap", 0.0)
        if time_limit is not None:
            h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
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
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        bound = info.mip_dual_bound * obj_scale if np.isfinite(info.mip_dual_bound) else None
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
