"""mpq solver: mixed-precision bit allocation as a multiple-choice knapsack with several budgets.

Pure Python + PuLP (+ highspy when importable); no torch, no I/O. Give it layers x candidates with a
sensitivity and costs per candidate, and budgets; get back an assignment with status, objective, per-budget
usage and, when infeasible, the minimum achievable value of each budget::

    from solver import Candidate, Layer, Problem, solve
    result = solve(Problem(layers, budgets={"size": 20e6, "abits": 6.0}))
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
