"""Schemas of ``POST /v1/allocate``: a JSON mirror of :class:`solver.Problem` and :class:`solver.SolveResult`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AllocateRequest", "AllocateResult", "BudgetUsagePublic", "CandidateIn", "LayerIn"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CandidateIn(_Strict):
    """One (weight bits, activation bits) choice of a layer, its predicted loss increase and its costs."""

    wbits: int = Field(ge=1, le=64)
    abits: int = Field(ge=1, le=64)
    sensitivity: float
    costs: dict[str, float] = Field(default_factory=dict, description="budget name -> cost (>= 0)")


class LayerIn(_Strict):
    name: str = Field(min_length=1, max_length=200)
    candidates: list[CandidateIn] = Field(min_length=1, max_length=512)
    fixed: tuple[int, int] | None = Field(default=None, description="(wbits, abits) the layer must take")
    tie: str | None = Field(
        default=None, max_length=200, description="layers with the same tie take the same pair"
    )


class AllocateRequest(_Strict):
    """Minimise the summed sensitivity subject to ``sum(costs[b]) <= budgets[b]`` for every budget ``b``."""

    layers: list[LayerIn] = Field(min_length=1, max_length=10_000)
    budgets: dict[str, float] = Field(description="budget name -> upper limit (> 0)")
    time_limit: float = Field(
        default=10.0, gt=0, description="seconds (capped by MPQ_ALLOCATE_MAX_TIME_LIMIT)"
    )


class BudgetUsagePublic(BaseModel):
    limit: float
    used: float | None
    min_achievable: float | None


class AllocateResult(BaseModel):
    """The solver's result; ``status`` is optimal, feasible or time_limit_no_solution (infeasible is a 422)."""

    status: str
    optimal: bool
    objective: float | None
    assignment: dict[str, list[int]]
    usage: dict[str, BudgetUsagePublic]
    gap: float | None
    solve_time: float
    backend: str
    message: str
    infeasible_budgets: list[str]
    stats: dict[str, Any]
