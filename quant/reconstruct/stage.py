"""Pipeline adapter: the ``reconstruct`` stage of ``quant.pipeline`` and re-applying its stored result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .blocks import discover_blocks
from .checkpoint import BlockCheckpoint
from .engine import reconstruct_

__all__ = ["CHECKPOINT_DIR", "load_reconstructed_", "reconstruct_stage"]

#: Sub-folder of the job's workdir holding the per-block checkpoints.
CHECKPOINT_DIR = "reconstruct"


def reconstruct_stage(qmodel: nn.Module, float_model: nn.Module, calib, config, workdir: Path,
                      progress: Callable[..., None] | None = None) -> dict:
    """Run (or resume) reconstruction as configured by ``config.method`` on ``calib.images``; JSON-able report.

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
    return report.to_dict()


@torch.no_grad()
def load_reconstructed_(qmodel: nn.Module, workdir: str | Path) -> int:
    """Apply the finished blocks checkpointed under ``workdir / "reconstruct"`` to ``qmodel`` (the same PTQ model
    the stage started from); returns how many blocks were applied (0 when there is no checkpoint).

    For a pipeline that skips a stored ``reconstruct`` stage on resume: the model must still be reconstructed.
    """
    ckpt = BlockCheckpoint(Path(workdir) / CHECKPOINT_DIR)
    state = ckpt.load_state()
    if state is None:
        return 0
    done = int(state.get("blocks_done", 0))
    if done > len(discover_blocks(qmodel)):
        raise ValueError(f"checkpoint has {done} blocks but the model has only {len(discover_blocks(qmodel))}")
    current = qmodel.state_dict()
    for i in range(done):
        for k, v in ckpt.load_block(i).items():
            if k not in current:
                raise ValueError(f"checkpointed tensor {k!r} does not exist in this model")
            current[k].copy_(v.to(current[k].device))
    return done
