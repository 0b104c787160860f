"""CBC through PuLP: the fallback when ``highspy`` is not installed.

Same rows and scaling (:mod:`solver.backends.scaling`) as :mod:`solver.backends.highs`. PuLP reports ``status == 1`` ('Optimal') also for a run
stopped by the time limit with a solution, so optimality needs ``sol_status == LpSolutionOptimal`` as well.
CBC's best bound is not reported through PuLP: ``bound`` stays None.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import pulp

from ..compile import Group
from .base import LPOutcome, MIPOutcome
from .scaling import ObjectiveScaling, scale_objective

__all__ = ["CbcBackend"]


def _build(
    groups: Sequence[Group],
    rhs: Sequence[float],
    scale: Sequence[float],
    obj: ObjectiveScaling,
    integer: bool,
) -> tuple[pulp.LpProblem, list[list[pulp.LpVariable]], list[str]]:
    prob = pulp.LpProblem("mpq_bits", pulp.LpMinimize)
    cat = pulp.LpBinary if integer else pulp.LpContinuous
    xs = [
        [prob.add_variable(f"x_{gi}_{o}", 0, 1, cat=cat) for o in range(len(g.sens))]
        for gi, g in enumerate(groups)
    ]
    prob += pulp.LpAffineExpression([(v, s) for cs, vs in zip(obj.costs, xs) for v, s in zip(vs, cs)])
    for gi, vs in enumerate(xs):
        prob += (pulp.LpAffineExpression([(v, 1.0) for v in vs]) == 1, f"one_{gi}")
    names = []
    for k, (r, s) in enumerate(zip(rhs, scale)):
        terms = [(v, c[k] / s) for g, vs in zip(groups, xs) for v, c in zip(vs, g.costs) if c[k] != 0.0]
        name = f"budget_{k}"
        prob += (pulp.LpAffineExpression(terms) <= r / s, name)
        names.append(name)
    return prob, xs, names


def _left(time_limit: float | None, started: float) -> float | None:
    """What is left of ``time_limit`` (counted from ``started``, model building included)."""
    return None if time_limit is None else time_limit - (time.perf_counter() - started)


def _cmd(time_limit: float | None, mip_gap: float = 0.0, warm: bool = False) -> pulp.PULP_CBC_CMD:
    # PULP_CBC_CMD (the CBC bundled with PuLP) warns that PuLP 4 will drop it; it is the only CBC here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _make_cmd(time_limit, mip_gap, warm)


def _make_cmd(time_limit: float | None, mip_gap: float, warm: bool) -> pulp.PULP_CBC_CMD:
    return pulp.PULP_CBC_CMD(
        msg=False,
        timeLimit=None if time_limit is None else max(float(time_limit), 0.01),
        gapRel=float(mip_gap),
        gapAbs=0.0,
        threads=1,
        warmStart=warm,
        # CBC's integer preprocessing returned a worse assignment as "Optimal" (1e-4 of the objective) on a
        # small instance with sensitivities spread over many decades (tests/solver/test_wide_range.py)
        options=["randomSeed 1", "randomCbcSeed 1", "primalT 1e-9", "preprocess off"],
    )


class CbcBackend:
    """Backend on CBC through PuLP."""

    name = "cbc"

    def solve_lp(
        self, groups: Sequence[Group], rhs: Sequence[float], scale: Sequence[float], time_limit: float | None
    ) -> LPOutcome:
        started = time.perf_counter()
        obj = scale_objective(groups)
        prob, xs, names = _build(groups, rhs, scale, obj, integer=False)
        prob.solve(_cmd(_left(time_limit, started)))
        if prob.status == pulp.LpStatusInfeasible:
            return LPOutcome("infeasible")
        if prob.status != pulp.LpStatusOptimal:
            return LPOutcome("error", message=f"CBC LP status {pulp.LpStatus[prob.status]}")
        x = [[v.value() or 0.0 for v in vs] for vs in xs]
        if any(abs(sum(xs_) - 1.0) > 1e-6 for xs_ in x):
            # CBC stopped by its time limit still reports 'Optimal' for the LP, with x = 0 (no solution)
            return LPOutcome("stopped", message="CBC LP stopped before a solution (time limit)")
        lam = tuple(
            max(0.0, -(prob.get_constraint_by_name(n).pi or 0.0)) * obj.scale / s
            for n, s in zip(names, scale)
        )
        return LPOutcome("optimal", lam=lam, x=x)

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
        prob, xs, _ = _build(groups, rhs, scale, obj, integer=True)
        if incumbent is not None:
            for vs, o in zip(xs, incumbent):
                for i, v in enumerate(vs):
                    v.setInitialValue(1 if i == o else 0)
        prob.solve(_cmd(_left(time_limit, started), mip_gap, warm=incumbent is not None))
        if prob.status == pulp.LpStatusInfeasible or prob.sol_status == pulp.LpSolutionInfeasible:
            return MIPOutcome("infeasible")
        has_solution = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
        choice = None
        if has_solution:
            choice = [max(range(len(vs)), key=lambda i: vs[i].value() or 0.0) for vs in xs]
        if (
            prob.status == pulp.LpStatusOptimal
            and prob.sol_status == pulp.LpSolutionOptimal
            and mip_gap == 0.0
        ):
            return MIPOutcome("optimal", choice)
        text = f"status {pulp.LpStatus[prob.status]}, solution status {prob.sol_status}"
        if choice is not None:
            return MIPOutcome("feasible", choice, message=f"CBC stopped: {text}")
        if prob.sol_status == pulp.LpSolutionNoSolutionFound:
            return MIPOutcome("no_solution", message=f"CBC stopped: {text}")
        return MIPOutcome("error", message=f"CBC {text}")
