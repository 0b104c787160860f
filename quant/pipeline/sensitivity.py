"""The ``sensitivity`` stage: LampQ's type-aware Fisher scores of every table entry (mixed-precision jobs only).

The scores themselves are computed by ``quant.sensitivity``; this module decides whether the stage runs (a job
with budgets) and stores its output.
"""

from __future__ import annotations

from torch import nn

from ..calibration import ParamTable
from .load import LoadedJob
from .runner import StageRunner

__all__ = ["sensitivity_step"]


def sensitivity_step(runner: StageRunner, job: LoadedJob, qmodel: nn.Module, table: ParamTable) -> dict | None:
    """Run or reuse the stage; returns the stored sensitivity table (a dict), or None for a uniform job."""
    config = job.config
    if not config.method.budgets:
        runner.stage("sensitivity", lambda: {"skipped": True, "reason": "uniform precision (no budgets)"})
        return None
    from ..sensitivity import sensitivity_stage

    return runner.stage("sensitivity", lambda: sensitivity_stage(
        qmodel, table, job.calib, config, lambda f: runner.report("sensitivity", f)))
