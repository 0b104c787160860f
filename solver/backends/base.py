"""What a backend does: solve the LP relaxation and the (reduced) integer program of a group table.

Both work on *free* groups only (groups with one option are constants handled by the caller) with
``rhs[k]``: what budget k leaves for these groups, ``scale[k] > 0``: the budget's full limit, used to scale
the rows to O(1) coefficients, and ``offset``: the constants' summed sensitivity (kept in the objective so that
relative gaps refer to the whole problem).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..compile import Group

__all__ = ["Backend", "LPOutcome", "MIPOutcome"]


@dataclass
class LPOutcome:
    """LP relaxation result.

    status: ``"optimal"``, ``"infeasible"``, ``"stopped"`` (time limit) or ``"error"``. lam: per-budget multipliers (objective units per
    cost unit, >= 0) read from the duals. x: per group, per option values in [0, 1].
    """

    status: str
    lam: tuple[float, ...] = ()
    x: list[list[float]] | None = None
    message: str = ""


@dataclass
class MIPOutcome:
    """Integer program result.

    status: ``"optimal"``, ``"feasible"`` (stopped with a solution), ``"infeasible"``, ``"no_solution"``
    (stopped without one) or ``"error"``. choice: option index per group. bound: proven lower bound on the
    objective (offset included), or None when the backend does not report one.
    """

    status: str
    choice: list[int] | None = None
    bound: float | None = None
    message: str = ""


class Backend(Protocol):
    name: str

    def solve_lp(
        self, groups: Sequence[Group], rhs: Sequence[float], scale: Sequence[float], time_limit: float | None
    ) -> LPOutcome: ...

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
    ) -> MIPOutcome: ...
