"""mpq solver: mixed-precision bit allocation as a multiple-choice knapsack with several budgets.

Pure Python + PuLP (+ highspy when importable); no torch, no I/O. Give it layers x candidates with a
sensitivity and costs per candidate, and budgets; get back an assignment with status, objective, per-budget
usage and, when infeasible, the minimum achievable value of each budget::

    from solver import Candidate, Layer, Problem, solve
    result = solve(Problem(layers, budgets={"size": 20e6, "abits": 6.0}))

How a problem is solved (see :mod:`solver.engine` and the modules it names): validation (exact messages) ->
tie groups and fixed layers compiled into groups -> dominated candidates dropped -> budgets that cannot be met
alone are reported -> separable problems (additive sensitivity, one-sided budgets) split into a weight part and
an activation part -> one binding budget: exact dynamic program -> several: LP relaxation, Lagrangian bounds,
reduced-cost and Lagrangian-DP fixing, then a small branch and bound or HiGHS (``highspy``; CBC via PuLP when
HiGHS is missing or fails a call) on what is left. "optimal" is only reported when proven; ``time_limit``
bounds the whole call (every phase looks at the clock and a greedy answer is always at hand). numpy (a
highspy dependency) is used by the dynamic programs; without it they are skipped.
"""

from .api import solve
from .costs import CostModel, LayerFacts, bops, weight_bytes
from .errors import SolverInputError
from .problem import Candidate, Layer, Problem
from .result import BudgetUsage, SolveResult
from .sweep import pareto_sweep

__all__ = [
    "BudgetUsage",
    "Candidate",
    "CostModel",
    "Layer",
    "LayerFacts",
    "Problem",
    "SolveResult",
    "SolverInputError",
    "bops",
    "pareto_sweep",
    "solve",
    "weight_bytes",
]
