"""``solve``: the one public entry point for a single bit-allocation problem."""

from __future__ import annotations

import math
import numbers
import time
from typing import Any

from .backends import BACKENDS, get_backend, highs_available
from .compile import compile_problem
from .engine import Outcome, Prepared, deadline_for, prepare_compiled, solve_prepared
from .errors import SolverInputError
from .problem import Problem
from .result import BudgetUsage, SolveResult
from .validate import check_problem

__all__ = ["check_options", "prepare", "solve", "to_result"]


def check_options(time_limit: Any, backend: Any, mip_gap: Any) -> None:
    """Validate the keyword options of :func:`solve` (same exact-message style as the problem validator)."""
    if time_limit is not None and (
        not isinstance(time_limit, numbers.Real)
        or isinstance(time_limit, bool)
        or not math.isfinite(time_limit)
        or time_limit <= 0
    ):
        raise SolverInputError(
            f"time_limit must be None or a finite number of seconds > 0, got {time_limit!r}"
        )
    if backend not in BACKENDS:
        raise SolverInputError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "highs" and not highs_available():
        raise SolverInputError("backend 'highs' requested but highspy is not installed")
    if (
        not isinstance(mip_gap, numbers.Real)
        or isinstance(mip_gap, bool)
        or not math.isfinite(mip_gap)
        or not 0 <= mip_gap < 1
    ):
        raise SolverInputError(f"mip_gap must be a number in [0, 1), got {mip_gap!r}")


def prepare(problem: Problem, deadline: float | None = None) -> Prepared:
    """Validate, compile (ties, fixed layers), prune dominated candidates, look for a weight/activation split
    (the last two stop at ``deadline``, a ``time.perf_counter()`` value: they are only speed-ups)."""
    check_problem(problem)
    return prepare_compiled(compile_problem(problem), deadline=deadline)


def to_result(problem: Problem, prep: Prepared, out: Outcome, started: float) -> SolveResult:
    """Turn an engine outcome into the public :class:`SolveResult` (objective and usage recomputed per layer)."""
    comp = prep.raw
    limits = comp.limits
    assignment: dict[str, tuple[int, int]] = {}
    objective = None
    used: list[float | None] = [None] * len(limits)
    if out.choice is not None:
        by_layer = {}
        for g, o in zip(comp.groups, out.choice):
            for name in g.layers:
                by_layer[name] = g.pairs[o]
        totals = [0.0] * len(limits)
        objective = 0.0
        for layer in problem.layers:
            pair = by_layer[layer.name]
            assignment[layer.name] = pair
            cand = next(c for c in layer.candidates if (c.wbits, c.abits) == pair)
            objective += float(cand.sensitivity)
            for k, name in enumerate(comp.budget_names):
                totals[k] += float(cand.costs.get(name, 0.0))
        used = list(totals)
    usage = {
        name: BudgetUsage(limits[k], used[k], comp.min_achievable[k])
        for k, name in enumerate(comp.budget_names)
    }
    gap = None
    if out.status == "optimal":
        gap = 0.0
    elif objective is not None and out.bound is not None:
        gap = max(0.0, (objective - out.bound) / max(abs(objective), 1e-300))
    stats = {
        "candidates": comp.n_candidates,
        "candidates_after_pruning": sum(len(g.sens) for g in prep.pruned.groups),
        "groups": len(comp.groups),
        **out.stats,
    }
    return SolveResult(
        status=out.status,
        optimal=out.status == "optimal",
        objective=objective,
        assignment=assignment,
        usage=usage,
        gap=gap,
        solve_time=time.perf_counter() - started,
        backend=out.backend,
        message=out.message,
        infeasible_budgets=out.infeasible_budgets,
        stats=stats,
    )


def solve(
    problem: Problem, *, time_limit: float | None = 10.0, backend: str = "auto", mip_gap: float = 0.0
) -> SolveResult:
    """Choose one candidate per layer minimising the summed sensitivity within every budget.

    Args:
        problem: layers x candidates and budgets (see :class:`solver.Problem`).
        time_limit: wall-clock seconds for the whole call (validation included), or None for no limit. Every
            phase looks at the clock; when the limit stops the search, the best assignment found (at least a
            greedy one) is returned with status ``"feasible"`` and a proven gap. The call returns within about
            0.2 s + 20 % of the limit (measured in ``bench/solver.py``), plus validation time on huge problems.
        backend: ``"auto"`` (HiGHS via highspy when importable, else CBC via PuLP), ``"highs"`` or ``"cbc"``.
            Trivial and small problems are solved without calling it (``backend == "none"`` in the result).
        mip_gap: relative optimality gap at which the search may stop (0: prove optimality).

    Returns:
        A :class:`SolveResult`; infeasible problems are reported in it (never raised). Same problem, same
        options -> same assignment.

    Raises:
        SolverInputError: the problem or an option breaks an input rule (the message states which).
    """
    started = time.perf_counter()
    check_options(time_limit, backend, mip_gap)
    deadline = deadline_for(time_limit)  # validation and preparation count against the limit too
    prep = prepare(problem, deadline)
    out = solve_prepared(prep, lambda: get_backend(backend), deadline=deadline, mip_gap=float(mip_gap))
    return to_result(problem, prep, out, started)
