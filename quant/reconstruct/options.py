"""Settings and results of a reconstruction run: ``ReconstructOptions`` (frozen, JSON-able, part of the checkpoint
fingerprint), its validation, and the ``BlockReport``/``ReconstructReport`` result objects."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from .losses import LOSSES

__all__ = ["BlockReport", "ReconstructOptions", "ReconstructReport", "validate_options"]


@dataclass(frozen=True)
class ReconstructOptions:
    """Settings of one reconstruction run (all JSON-able; part of the checkpoint fingerprint)."""

    loss: str = "fisher_dplr"
    iters: int = 500
    rank: int = 5
    batch_size: int = 32
    seed: int = 0
    fisher_images: int = 64
    temperature: float = 20.0
    drop_prob: float = 0.5
    round_weight: float = 0.01
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    round_lr: float | None = None
    act_lr: float | None = None
    ridge: float = 1e-6
    version: int = 1

    @property
    def resolved_round_lr(self) -> float:
        return self.round_lr if self.round_lr is not None else 1e-3 * max(1.0, 2000.0 / self.iters)

    @property
    def resolved_act_lr(self) -> float:
        return self.act_lr if self.act_lr is not None else 4e-5 * max(1.0, 2000.0 / self.iters)


@dataclass
class BlockReport:
    """One finished block. ``error_before``/``error_after``: output error on all optimisation images with the
    quantized input ``X_q`` before and after reconstruction (``metric``: ``mse`` = mean squared error of the block
    output, ``kl`` = KL to the float logits for the head). ``objective_before``/``_after``: the block's training
    objective (MSE loss, normalised Fisher loss with the final snapshot rows, or head KL) on all optimisation images
    without QDrop; ``kept`` is ``reconstructed``, or ``ptq`` when reconstruction did not lower it (the block then
    keeps its calibrated scales and nearest rounding). ``train_loss``: mean training loss of the last 10 % of
    iterations. ``seconds`` is wall time, ``cpu_seconds`` this process's CPU time (steadier on a shared machine);
    ``snapshot_*`` the part spent in Fisher snapshots."""

    index: int
    name: str
    kind: str
    loss: str
    metric: str
    error_before: float
    error_after: float
    objective_before: float
    objective_after: float
    kept: str
    train_loss: float
    iters: int
    seconds: float
    cpu_seconds: float
    snapshot_seconds: float
    snapshot_cpu_seconds: float
    snapshots: int
    rounded_layers: int
    learned_act_scales: int


@dataclass
class ReconstructReport:
    """Result of ``reconstruct_``: settings, per-block reports, how much was resumed, timings."""

    options: dict
    blocks: list[BlockReport] = field(default_factory=list)
    total_blocks: int = 0
    resumed_blocks: int = 0
    resume_note: str = ""
    complete: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    images: int = 0
    #: ``{layer: LayerParams}``: the refined params of every reconstructed layer (not part of ``to_dict``).
    params: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (what the pipeline stores as the stage output; ``params`` left out)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "params"}
        data["blocks"] = [asdict(b) for b in self.blocks]
        data["loss"] = self.options["loss"]
        data["rank"] = self.options["rank"] if self.options["loss"] in ("fisher_lr", "fisher_dplr") else None
        data["iters"] = self.options["iters"]
        data["blocks_done"] = len(self.blocks)
        return data


def validate_options(options: ReconstructOptions, images: torch.Tensor, max_blocks: int | None) -> None:
    if options.loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {options.loss!r}")
    if not isinstance(options.iters, int) or options.iters < 1:
        raise ValueError(f"iters must be a positive integer; got {options.iters!r}")
    if not isinstance(options.rank, int) or options.rank < 1:
        raise ValueError(f"rank must be a positive integer; got {options.rank!r}")
    if not isinstance(options.batch_size, int) or options.batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {options.batch_size!r}")
    if not isinstance(options.fisher_images, int) or options.fisher_images < 1:
        raise ValueError(f"fisher_images must be a positive integer; got {options.fisher_images!r}")
    if not 0.0 < options.drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in (0, 1] (1 = no QDrop); got {options.drop_prob}")
    if not 0.0 <= options.warmup < 1.0:
        raise ValueError(f"warmup must be in [0, 1); got {options.warmup}")
    if options.temperature <= 0:
        raise ValueError(f"temperature must be positive; got {options.temperature}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point() or not len(images):
        raise ValueError("images must be a non-empty float tensor [N, C, H, W]")
    if max_blocks is not None and (not isinstance(max_blocks, int) or max_blocks < 0):
        raise ValueError(f"max_blocks must be None or an integer >= 0; got {max_blocks!r}")
