"""The ``allocate`` stage: one table pair per layer, from the ILP over the sensitivity table (mixed precision) or
the job's single pair (uniform precision).

The problem, the solver call, LampQ's iterative update and Pareto sweeps live in ``quant.allocation``; this module
runs the stage and turns its output into the chosen assignment.
"""

from __future__ import annotations

from torch import nn

from ..calibration import Pair, ParamTable
from .load import LoadedJob
from .runner import StageRunner

__all__ = ["allocate_step", "chosen_pairs"]


def allocate_step(runner: StageRunner, job: LoadedJob, qmodel: nn.Module, table: ParamTable, profiles,
                  sensitivity: dict | None, latency) -> dict:
    """Run or reuse the stage; returns its output (``allocation``: ``{layer: {"wbits", "abits", ...}}``, budgets,
    predicted loss and latency, Pareto points)."""
    from ..allocation import allocate_stage, uniform_allocation

    config = job.config
    if not config.method.budgets:
        return runner.stage("allocate", lambda: uniform_allocation(qmodel, config, latency))
    return runner.stage("allocate", lambda: allocate_stage(
        qmodel, table, job.calib, profiles, sensitivity, config, lambda f: runner.report("allocate", f),
        latency=latency))


def chosen_pairs(allocation_out: dict) -> dict[str, Pair]:
    """``{layer: (wbits, abits)}``: the table pair the allocation chose for each layer."""
    return {name: (int(e["wbits"]), int(e["abits"])) for name, e in allocation_out["allocation"].items()}
