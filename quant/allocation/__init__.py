"""LampQ bit allocation: the solver problem of a job (``problem``), the iterative update (``iterative``), Pareto
sweeps (``pareto``) and the pipeline stage (``stage``). Imports go one way: stage -> pareto/iterative -> problem."""

from .iterative import measure_layer_kl
from .pareto import BUDGET_UNITS, pareto_from_stages, sweep_problem
from .problem import (
    build_problem,
    check_budgets_feasible,
    problem_budgets,
    raise_infeasible,
    solve_allocation,
    user_latency,
)
from .stage import allocate_stage, uniform_allocation

__all__ = [
    "BUDGET_UNITS",
    "allocate_stage",
    "build_problem",
    "check_budgets_feasible",
    "measure_layer_kl",
    "pareto_from_stages",
    "problem_budgets",
    "raise_infeasible",
    "solve_allocation",
    "sweep_problem",
    "uniform_allocation",
    "user_latency",
]
