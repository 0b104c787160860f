"""Result types returned by :func:`solver.solve` and :func:`solver.pareto_sweep`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATUSES", "BudgetUsage", "SolveResult"]

#: ``optimal``: proven optimal. ``feasible``: a valid assignment whose optimality is not proven (time limit or
#: ``mip_gap``). ``infeasible``: no assignment meets every budget. ``time_limit_no_solution``: stopped before
#: any valid assignment was found.
STATUSES = ("optimal", "feasible", "infeasible", "time_limit_no_solution")


@dataclass(frozen=True)
class BudgetUsage:
    """How one budget is used.

    Attributes:
        limit: the budget's upper limit (the budget's unit).
        used: sum of the budget's cost over the returned assignment, or None when there is no assignment.
        min_achievable: smallest total any assignment can reach for this budget alone, respecting fixed layers
            and tie groups.
    """

    limit: float
    used: float | None
    min_achievable: float

    def to_dict(self) -> dict[str, float | None]:
        return {"limit": self.limit, "used": self.used, "min_achievable": self.min_achievable}


@dataclass(frozen=True)
class SolveResult:
    """Outcome of one solve.

    Attributes:
        status: one of :data:`STATUSES`.
        optimal: True exactly when ``status == "optimal"``.
        objective: summed sensitivity of the assignment, or None without an assignment.
        assignment: layer name -> ``(wbits, abits)``; empty without an assignment.
        usage: budget name -> :class:`BudgetUsage`.
        gap: relative gap ``(objective - best bound) / |objective|``; 0.0 when optimal, None without assignment.
        solve_time: wall-clock seconds spent in the call (validation included).
        backend: ``"highs"``, ``"cbc"`` or ``"none"`` when no MIP solver was needed.
        message: human-readable summary; for infeasible problems it says which budget(s) cannot be met.
        infeasible_budgets: budgets that cannot be met even on their own.
        stats: counters about the solve (candidates before/after pruning, bound, ...), for diagnostics.
    """

    status: str
    optimal: bool
    objective: float | None
    assignment: dict[str, tuple[int, int]]
    usage: dict[str, BudgetUsage]
    gap: float | None
    solve_time: float
    backend: str
    message: str
    infeasible_budgets: tuple[str, ...] = ()
    stats: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (pairs become 2-element lists); :meth:`from_dict` inverts it."""
        return {
            "status": self.status,
            "optimal": self.optimal,
            "objective": self.objective,
            "assignment": {name: [w, a] for name, (w, a) in self.assignment.items()},
            "usage": {name: u.to_dict() for name, u in self.usage.items()},
            "gap": self.gap,
            "solve_time": self.solve_time,
            "backend": self.backend,
            "message": self.message,
            "infeasible_budgets": list(self.infeasible_budgets),
            "stats": dict(self.stats),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SolveResult:
        """Rebuild a result from :meth:`to_dict` output (e.g. after a JSON round trip)."""
        return cls(
            status=data["status"],
            optimal=data["optimal"],
            objective=data["objective"],
            assignment={name: (int(p[0]), int(p[1])) for name, p in data["assignment"].items()},
            usage={name: BudgetUsage(**u) for name, u in data["usage"].items()},
            gap=data["gap"],
            solve_time=data["solve_time"],
            backend=data["backend"],
            message=data["message"],
            infeasible_budgets=tuple(data["infeasible_budgets"]),
            stats=dict(data.get("stats", {})),
        )
