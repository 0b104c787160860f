"""The general exact path for a pruned group table.

- One budget only, or a single budget binding in the LP relaxation: the exact dynamic program of
  :mod:`solver.dp` (other budgets are checked afterwards; if one is broken, the path below runs).
- Otherwise: a greedy assignment first (:func:`solver.heuristic.greedy_start`, O(S log S)), so that a stop at
  any later point returns a real answer with a proven (trivial or Lagrangian) bound; then LP relaxation
  (backend; skipped when less time is left than the greedy pass took) -> multipliers ``lam`` -> Lagrangian bound ``L(lam)`` evaluated exactly here
  -> incumbent (LP rounding, repair, 1-opt; or the caller's hint) -> reduced-cost fixing with ``UB - L(lam)``
  -> with several binding budgets, the Lagrangian dynamic program (:mod:`solver.lagdp`): better incumbents
  (plus a pair-move local search) and exact fixing that keeps one budget exact at a time
  -> groups left with one option become constants -> small problems: depth-first branch and bound
  (:mod:`solver.search`); larger ones: the MIP backend started from the incumbent.
Options are only removed when no assignment using them can beat the incumbent, so optimality is exact (up to
the MIP backend's own optimality tolerances, set to zero gap). Every assignment a backend returns is checked
against the budgets in exact arithmetic order; one that slipped by the backend's tolerance is re-solved with
tightened limits (and then only called optimal if it matches the first run's bound). A MIP "optimal" that is
worse than an assignment already known is not passed on: the better one is returned as ``feasible``.
Every phase looks at the deadline; a stopped search returns ``feasible`` with a gap, never ``optimal``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import dp
from .backends import Backend
from .compile import Compiled, Group
from .heuristic import greedy_start, round_lp
from .lagdp import lagrangian_dp_stage
from .lagrange import fix_by_reduced_cost, lagrangian
from .numerics import feasible, objective, usage
from .search import branch_and_bound

__all__ = ["Outcome", "solve_general"]

#: the depth-first search is tried only on reduced problems with at most this many free groups ...
_SEARCH_MAX_GROUPS = 12
#: ... and stops after this many nodes (then the MIP backend takes over)
_SEARCH_NODES = 2_000
#: the Lagrangian dynamic program runs when reduced-cost fixing leaves at most this many free groups (beyond,
#: its fronts grow large and it costs more than it saves)
_LAGDP_MAX_GROUPS = 200
#: re-solves with tightened limits when a MIP assignment breaks a budget by the backend's tolerance
_MIP_RETRIES = 2


@dataclass
class Outcome:
    """Result in terms of a group table: ``choice`` is an option index per group, ``bound`` a proven lower
    bound on the objective (the objective itself when optimal)."""

    status: str
    choice: list[int] | None = None
    bound: float | None = None
    backend: str = "none"
    message: str = ""
    infeasible_budgets: tuple[str, ...] = ()
    stats: dict[str, float] = field(default_factory=dict)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.perf_counter(), 0.0)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def _trivial_bound(groups: Sequence[Group]) -> float:
    """Sum of each group's least sensitivity: a lower bound that needs no solver."""
    return sum(min(g.sens) for g in groups)


def _min_sens_choice(groups: Sequence[Group], limits: Sequence[float]) -> list[int]:
    """Each group's least sensitive option; ties broken by the limit-normalised cost, then the index."""

    def key(g: Group, o: int) -> tuple[float, int]:
        return (sum(c / b for c, b in zip(g.costs[o], limits)), o)

    out = []
    for g in groups:
        sens = g.sens
        low = min(sens)
        ties = [o for o, s in enumerate(sens) if s == low]
        out.append(ties[0] if len(ties) == 1 else min(ties, key=lambda o, g=g: key(g, o)))
    return out


def _single_budget(
    groups: Sequence[Group], limits: Sequence[float], k: int, deadline: float | None
) -> tuple[str, list[int] | None]:
    """Exact DP on budget k alone; ``("optimal", choice)`` only if the choice also meets the other budgets."""
    res = dp.solve_one_budget(groups, k, limits[k], deadline=deadline)
    if res.status == "infeasible":
        return "infeasible", None
    if res.status != "optimal" or res.choice is None:
        return "aborted", None
    if feasible(usage(groups, res.choice, len(limits)), limits):
        return "optimal", res.choice
    return "other_budget_broken", res.choice


def solve_general(
    comp: Compiled,
    get_backend: Callable[[], Backend],
    *,
    deadline: float | None,
    mip_gap: float,
    hint: Sequence[int] | None = None,
) -> Outcome:
    """Solve ``comp`` (pruned groups; per-budget feasibility already checked by the caller)."""
    start = time.perf_counter()
    groups = comp.groups
    limits = comp.limits
    m = len(limits)
    stats: dict[str, float] = {}

    best = _min_sens_choice(groups, limits)
    if feasible(usage(groups, best, m), limits):
        return Outcome(
            "optimal",
            best,
            objective(groups, best),
            message="optimal: the least sensitive candidates fit every budget",
        )
    if m == 1 and dp.available():
        status, choice = _single_budget(groups, limits, 0, deadline)
        if status == "optimal" and choice is not None:
            stats["dp"] = 1
            return Outcome(
                "optimal", choice, objective(groups, choice), message="optimal: dynamic program", stats=stats
            )
        if status == "infeasible":
            return Outcome("infeasible")

    # constants (groups with one option) leave less of each budget to the others
    free = [gi for gi, g in enumerate(groups) if len(g.sens) > 1]
    const = [gi for gi, g in enumerate(groups) if len(g.sens) == 1]
    const_sens = sum(groups[gi].sens[0] for gi in const)
    rhs = [limits[k] - sum(groups[gi].costs[0][k] for gi in const) for k in range(m)]
    fgroups = [groups[gi] for gi in free]

    def full(choice_free: Sequence[int]) -> list[int]:
        out = [0] * len(groups)
        for gi, o in zip(free, choice_free):
            out[gi] = o
        return out

    incumbent: list[int] | None = None
    inc_value = float("inf")
    if hint is not None and len(hint) == len(groups) and feasible(usage(groups, hint, m), limits):
        incumbent = [hint[gi] for gi in free]
        inc_value = objective(fgroups, incumbent)
    # a fast greedy assignment first, so that a stop at any later point returns a real answer
    t0 = time.perf_counter()
    greedy = greedy_start(fgroups, rhs, deadline, weights=[1.0 / abs(b) for b in limits])
    stats["greedy_time"] = time.perf_counter() - t0
    if greedy is not None and objective(fgroups, greedy) < inc_value:
        incumbent, inc_value = greedy, objective(fgroups, greedy)
    trivial = _trivial_bound(fgroups)  # proven without any solver

    backend_box: list[Backend] = []

    def backend_name() -> str:
        return backend_box[0].name if backend_box else "none"

    def finish(status: str, choice_free: Sequence[int] | None, bound: float | None, message: str) -> Outcome:
        stats["general_time"] = time.perf_counter() - start
        notes = getattr(backend_box[0], "notes", []) if backend_box else []
        if notes:
            message = "; ".join([message, *notes]) if message else "; ".join(notes)
        if choice_free is not None and status == "feasible":
            bound = trivial if bound is None else max(bound, trivial)
        return Outcome(
            status,
            None if choice_free is None else full(choice_free),
            None if bound is None else bound + const_sens,
            backend_name(),
            message,
            stats=stats,
        )

    def stopped(bound: float | None) -> Outcome:
        if incumbent is None:
            return finish(
                "time_limit_no_solution", None, None, "time limit reached before any assignment was found"
            )
        return finish("feasible", incumbent, bound, "time limit reached: best assignment found so far")

    left = _remaining(deadline)
    if left is not None and left < stats["greedy_time"]:
        # building the LP costs about as much as the greedy pass did: no time left to use one
        return stopped(None)
    backend = get_backend()
    backend_box.append(backend)

    t0 = time.perf_counter()
    lp = backend.solve_lp(fgroups, rhs, limits, _remaining(deadline))
    stats["lp_time"] = time.perf_counter() - t0
    if lp.status == "infeasible" and incumbent is None:  # (with an assignment in hand, the LP is wrong)
        return finish("infeasible", None, None, "")
    if _expired(deadline):
        if lp.status == "optimal":
            return stopped(lagrangian(fgroups, rhs, lp.lam)[0])
        return stopped(None)
    lower = float("-inf")  # Lagrangian bound L(lam) of the LP multipliers (pairs with the reduced costs)
    proven = trivial  # best proven lower bound
    binding: list[int] = []
    rcs: list[list[float]] | None = None
    if lp.status == "optimal":
        lower, rcs = lagrangian(fgroups, rhs, lp.lam)
        proven = max(proven, lower)
        stats["lp_bound"] = lower + const_sens
        binding = [k for k in range(m) if lp.lam[k] * limits[k] > 1e-12 * max(1.0, abs(lower))]
        if len(binding) == 1 and dp.available():
            status, choice = _single_budget(fgroups, rhs, binding[0], deadline)
            if status == "optimal" and choice is not None:
                stats["dp"] = 1
                return finish("optimal", choice, objective(fgroups, choice), "optimal: dynamic program")
        t0 = time.perf_counter()
        rounded = round_lp(fgroups, lp.x or [], rhs, lp.lam, deadline)
        stats["heuristic_time"] = time.perf_counter() - t0
        if rounded is not None:
            value = objective(fgroups, rounded)
            if value < inc_value:
                incumbent, inc_value = rounded, value
    if incumbent is not None:
        stats["heuristic_objective"] = inc_value + const_sens

    mip_groups, mip_rhs, mip_offset, mip_incumbent = fgroups, rhs, 0.0, incumbent
    sub_idx: list[int] | None = None
    keep: list[list[int]] = []
    if incumbent is not None and rcs is not None:
        tol = 1e-9 * (abs(inc_value) + abs(lower) + sum(lam * b for lam, b in zip(lp.lam, rhs))) + 1e-12
        keep = fix_by_reduced_cost(rcs, inc_value - lower + tol)
        if dp.available() and len(binding) >= 2 and sum(len(k) > 1 for k in keep) <= _LAGDP_MAX_GROUPS:
            t0 = time.perf_counter()
            incumbent, inc_value, keep, dp_bound = lagrangian_dp_stage(
                fgroups, rhs, lp.lam, binding, incumbent, inc_value, rcs, lower, tol, deadline
            )
            stats["lagrangian_dp_time"] = time.perf_counter() - t0
            stats["lagrangian_dp_bound"] = min(dp_bound, inc_value) + const_sens
            stats["dp_objective"] = inc_value + const_sens
            proven = max(proven, min(dp_bound, inc_value))
            if proven >= inc_value - tol:
                return finish(
                    "optimal", incumbent, inc_value, "optimal: proven by the Lagrangian dynamic program"
                )
        else:
            keep = fix_by_reduced_cost(rcs, inc_value - lower + tol)
        stats["candidates_after_fixing"] = sum(len(k) for k in keep) + len(const)
        sub_idx = [i for i, k in enumerate(keep) if len(k) > 1]
        stats["free_groups"] = len(sub_idx)
        base = list(incumbent)
        for i, k in enumerate(keep):
            if len(k) == 1:
                base[i] = k[0]
        if not sub_idx:
            return finish("optimal", base, objective(fgroups, base), "optimal: proven by reduced-cost fixing")
        fixed_sens = sum(fgroups[i].sens[k[0]] for i, k in enumerate(keep) if len(k) == 1)
        sub_rhs = [
            rhs[j] - sum(fgroups[i].costs[k[0]][j] for i, k in enumerate(keep) if len(k) == 1)
            for j in range(m)
        ]
        sub_groups = [fgroups[i].subset(keep[i]) for i in sub_idx]
        sub_inc = [keep[i].index(incumbent[i]) for i in sub_idx]
        if len(sub_idx) <= _SEARCH_MAX_GROUPS:
            sub_rcs = [[rcs[i][o] for o in keep[i]] for i in sub_idx]
            # L(lam) restricted to the reduced problem: the fixed groups' minimum reduced cost is 0
            sub_bound = lower - fixed_sens
            choice, _, done, nodes = branch_and_bound(
                sub_groups, sub_rcs, sub_rhs, sub_bound, sub_inc, inc_value - fixed_sens, tol, _SEARCH_NODES
            )
            stats["search_nodes"] = nodes
            for i, o in zip(sub_idx, choice):
                base[i] = keep[i][o]
            if done:
                return finish(
                    "optimal", base, objective(fgroups, base), "optimal: proven by branch and bound"
                )
            sub_inc = [keep[i].index(base[i]) for i in sub_idx]
            inc_value = objective(fgroups, base)
        incumbent = base
        mip_groups, mip_rhs, mip_offset, mip_incumbent = sub_groups, sub_rhs, fixed_sens, sub_inc
    if _expired(deadline):
        return stopped(proven)

    t0 = time.perf_counter()
    mip_rhs = list(mip_rhs)
    retried = False
    first_bound: float | None = None  # bound of the untightened MIP: valid for the original problem
    choice_free: list[int] | None = None
    for attempt in range(_MIP_RETRIES + 1):
        if attempt > 0 and _expired(deadline):
            break
        mip = backend.solve_mip(
            mip_groups,
            mip_rhs,
            limits,
            offset=mip_offset + const_sens,
            incumbent=mip_incumbent,
            time_limit=_remaining(deadline),
            mip_gap=mip_gap,
        )
        choice_free = None
        if attempt == 0 and mip.bound is not None:
            first_bound = mip.bound - const_sens
        if mip.status == "infeasible" or mip.choice is None:
            break
        if sub_idx is None:
            choice_free = list(mip.choice)
        else:
            choice_free = list(incumbent or [])
            for i, o in zip(sub_idx, mip.choice):
                choice_free[i] = keep[i][o]
        used = usage(fgroups, choice_free, m)
        if feasible(used, rhs):
            break
        # the backend's tolerance let a budget slip: tighten what the reduced problem may use and solve again
        retried = True
        for k in range(m):
            over = used[k] - rhs[k]
            if over > 0:
                mip_rhs[k] -= 2.0 * over + 1e-12 * abs(limits[k])
        choice_free = None
    stats["mip_called"] = 1
    stats["mip_time"] = time.perf_counter() - t0
    if mip.status == "infeasible" and not retried and incumbent is None:
        return finish("infeasible", None, None, "")
    mip_bound = None if mip.bound is None or retried else mip.bound - const_sens
    # a MIP "optimal" answer worse than an assignment already known is wrong (tolerances): keep the better one,
    # and neither the claim nor the backend's bound is used
    contradicted = False
    if choice_free is not None and incumbent is not None:
        mip_value = objective(fgroups, choice_free)
        if inc_value < mip_value - 1e-9 * max(abs(mip_value), abs(inc_value)):
            contradicted = mip.status == "optimal"
            choice_free = incumbent
    if contradicted:
        stats["mip_contradicted"] = 1
        mip_bound = None
    if choice_free is None:
        choice_free = incumbent
    if choice_free is None:
        if mip.status == "no_solution":
            return finish(
                "time_limit_no_solution", None, None, "time limit reached before any assignment was found"
            )
        return finish("time_limit_no_solution", None, None, f"no assignment found: {mip.message}")
    value = objective(fgroups, choice_free)
    if mip.status == "optimal" and not retried and not contradicted:
        return finish("optimal", choice_free, value, "optimal")
    if retried and first_bound is not None:
        # the first MIP's bound holds for a (tolerance-)relaxed problem, so it is a valid lower bound here
        lb = first_bound if sub_idx is None else min(first_bound, inc_value)
        if value <= lb + 1e-9 * max(1.0, abs(value)):
            return finish(
                "optimal", choice_free, value, "optimal (re-solved after a budget slipped by tolerance)"
            )
        proven = max(proven, lb)
    bounds = [b for b in (proven, mip_bound) if b is not None]
    if mip_bound is not None and sub_idx is not None:
        # the reduced problem's bound holds only inside it; outside, nothing beats the incumbent used for fixing
        bounds = [proven, min(mip_bound, inc_value)]
    bound = max(bounds) if bounds else None
    reason = mip.message or ("stopped at the requested mip_gap" if mip_gap > 0 else "stopped")
    if retried:
        reason = "the MIP backend's assignment broke a budget within its tolerance; re-solved with tightened limits"
    if contradicted:
        reason = (
            "the MIP backend reported a worse assignment as optimal (numerical tolerances); the better assignment "
            "found here is returned, not proven optimal"
        )
    return finish("feasible", choice_free, bound, reason)
