"""Pipeline adapter: the ``reconstruct`` stage of ``quant.pipeline``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..quantizers import LayerParams
from .engine import reconstruct_

__all__ = ["CHECKPOINT_DIR", "reconstruct_stage"]

#: Sub-folder of the job's workdir holding the per-block checkpoints.
CHECKPOINT_DIR = "reconstruct"


def reconstruct_stage(qmodel: nn.Module, float_model: nn.Module, calib, config, workdir: Path,
                      progress: Callable[..., None] | None = None) -> tuple[dict, dict[str, LayerParams]]:
    """Run (or resume) reconstruction of ``qmodel`` (assembled with the job's chosen table entries) as configured by
    ``config.method`` on ``calib.images``; returns the JSON-able report and the refined params ``{layer: params}``
    that the pipeline writes into its parameter table.

    Uses ``config.method.reconstruct`` (loss), ``reconstruct_iters``, ``reconstruct_rank``, ``config.seed``,
    ``config.data.batch_size`` and the device of ``float_model``'s parameters. Checkpoints go to
    ``workdir / "reconstruct"``.
    """
    method = config.method
    device = next(float_model.parameters()).device
    report = reconstruct_(
        qmodel, float_model, calib.images,
        loss=method.reconstruct, iters=method.reconstruct_iters, rank=method.reconstruct_rank,
        batch_size=config.data.batch_size, seed=config.seed, workdir=Path(workdir) / CHECKPOINT_DIR,
        progress=(lambda fraction, message: progress(fraction, message)) if progress else None, device=device,
    )
    return report.to_dict(), dict(report.params)
