"""FIMA-Q block-wise reconstruction of a calibrated fake-quantized timm ViT/DeiT/Swin.

``reconstruct_(qmodel, float_model, images, loss="fisher_dplr", ...)`` goes through the blocks of
``blocks.discover_blocks`` in order. For block ``i`` it keeps, for all optimisation images, the float input
``X_fp`` and output ``Y_fp`` (float model) and the quantized input ``X_q`` (output of the already reconstructed
quantized blocks ``0..i-1``); these caches are carried from block to block, so no block is ever run twice.
It then trains, for ``iters`` iterations on random batches:

- AdaRound rounding of every quantized weight of the block (``adaround``), regulariser weight 0.01,
  ``beta`` 20 -> 2 after a 20 % warm-up; the weight grids (scales, zero points) stay as calibrated;
- the scales of the block's uniform per-tensor activation quantizers (straight-through gradients, Adam, cosine
  learning rate), the post-softmax quantizers stay fixed;
- QDrop: the block input mixes ``X_q`` and ``X_fp`` element-wise (p = 0.5) and activation quantizers are bypassed
  element-wise with probability 0.5;

against ``loss`` (``losses``): ``mse`` on the block output, or a Fisher loss whose ``k = rank`` snapshots are taken at
iterations ``floor(j * iters / k)`` (``fisher.fisher_snapshot``: current block + float tail only). The head block
(classifier with its norm/pooling) always uses plain KL to the float logits, for every loss (as the reference
implementation does). After the block, weights are hard-rounded onto their integer grids and stored as dequantized
grid codes in the layers' weight params (the float weights are never changed); the block is checkpointed.
Safeguard (ours): if the hard-rounded block does not lower its own objective on all optimisation images (no QDrop)
compared with the entries it started from, those are kept and the report says ``kept="ptq"`` (``block``).

Choices where the paper is silent (documented here and in the report): the learning rates scale with the
schedule length (``round_lr = 1e-3 * max(1, 2000 / iters)``, ``act_lr = 4e-5 * max(1, 2000 / iters)``, the paper's values
at 2000+ iterations), Fisher snapshots use ``fisher_images`` (default 64) of the optimisation images, chosen once
per run with the seed.

Devices: everything the loop creates lives on the models' device; the loop has no host syncs (the training loss
is summed on the device and read once per block). On CUDA the fixed-shape training step (forward and loss, and
its backward) runs under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) with an eager fallback, QDrop
masks come from the device RNG (seeded per block inside ``torch.random.fork_rng``), and Fisher snapshots run as
one batch of all snapshot images. On the CPU the step is eager and masks are windows of a per-block pool
(``qdrop.MaskSource``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import ParamTable
from ..quantizers import LayerParams
from ..wrap import load_params_, quant_layers
from .block import block_seed, train_block
from .blocks import block_quant_layers, discover_blocks, map_batches
from .checkpoint import BlockCheckpoint, tensor_digest
from .compile import compile_enabled
from .losses import FISHER_LOSSES
from .malloc_tuning import tune_cpu_allocator
from .options import BlockReport, ReconstructOptions, ReconstructReport, validate_options

__all__ = ["reconstruct_"]

_log = logging.getLogger(__name__)

#: progress(fraction in [0, 1], message)
Progress = Callable[[float, str], None]


def _fingerprint(qmodel, float_model, qblocks, images, options) -> dict:
    """What a checkpoint must match: ``config`` (options, images, blocks, every tensor of both models, the params of
    every layer outside the blocks) and per block the digest of its layers' starting params."""
    layers = quant_layers(qmodel)
    config = {
        "options": asdict(options),
        "images": tensor_digest({"images": images}),
        "blocks": [b.name for b in qblocks],
        "float_model": tensor_digest(float_model.state_dict()),
        "model": tensor_digest(qmodel.state_dict()),
    }
    config_digest = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()
    per_block = []
    for block in qblocks:
        names = list(block_quant_layers(qmodel, block))
        table = ParamTable({name: {(0, 0): layers[name].params} for name in names})
        per_block.append(table.digest())
    return {"config": {"digest": config_digest}, "blocks": per_block}


class _Run:
    """State shared by the blocks of one call."""

    def __init__(self, qmodel, float_model, images, options, device, progress, compile_setting="auto"):
        self.qmodel, self.float_model, self.images = qmodel, float_model, images
        self.options, self.device, self.progress = options, device, progress
        self.compile = compile_setting
        # Fisher snapshots: one batch of all snapshot images on a GPU (few, large launches), else the batch size
        self.snapshot_batch = max(options.fisher_images, options.batch_size) if device.type == "cuda" \
            else options.batch_size
        self.qblocks = discover_blocks(qmodel)
        self.fblocks = discover_blocks(float_model)
        if [b.name for b in self.qblocks] != [b.name for b in self.fblocks]:
            raise ValueError("quantized and float models have different block structures")
        self.fisher = options.loss in FISHER_LOSSES
        self.fisher_idx: torch.Tensor | None = None
        self.target_log_probs: torch.Tensor | None = None

    def report_progress(self, index: int, fraction_in_block: float, message: str) -> None:
        if self.progress is not None:
            self.progress((index + fraction_in_block) / len(self.qblocks), message)

    def prepare_fisher(self) -> None:
        opts = self.options
        n = len(self.images)
        gen = torch.Generator(device="cpu").manual_seed(block_seed(opts.seed, -1))
        # drawn on the CPU on purpose: the same snapshot images on every device
        idx = torch.randperm(n, generator=gen, device="cpu")[: min(opts.fisher_images, n)].sort().values
        self.fisher_idx = idx.to(self.device)
        logits = map_batches(self.float_model, self.images[self.fisher_idx], opts.batch_size)
        self.target_log_probs = F.log_softmax(logits / opts.temperature, dim=-1)

    def block(self, index: int, x_q, x_fp, y_fp) -> tuple[BlockReport, dict[str, LayerParams]]:
        """Train block ``index``; a compiled step that fails after its first call is retried eagerly."""
        try:
            return train_block(self, index, x_q, x_fp, y_fp)
        except RuntimeError as exc:
            # A compiled step can also fail after its first call (e.g. in a CUDA-graph replay during backward);
            # the interrupted block was put back as it was, so it is trained again eagerly. Out of memory is the
            # job's to report, not a compiler failure.
            if not compile_enabled(self.device, self.compile) or isinstance(exc, torch.OutOfMemoryError):
                raise
            _log.warning("compiled reconstruction of block %d failed (%s); retrying it eagerly", index, exc)
            self.compile = "off"
            return train_block(self, index, x_q, x_fp, y_fp)


def _resolve_device(qmodel: nn.Module, float_model: nn.Module, device: str | torch.device) -> torch.device:
    current = next(qmodel.parameters()).device
    if device == "auto":
        return current
    target = torch.device(device)
    qmodel.to(target)
    float_model.to(target)
    return next(qmodel.parameters()).device


def reconstruct_(
    qmodel: nn.Module,
    float_model: nn.Module,
    images: torch.Tensor,
    *,
    loss: str = "fisher_dplr",
    iters: int = 500,
    rank: int = 5,
    batch_size: int = 32,
    seed: int = 0,
    workdir: str | Path | None = None,
    progress: Progress | None = None,
    device: str | torch.device = "auto",
    max_blocks: int | None = None,
    fisher_images: int = 64,
    temperature: float = 20.0,
    drop_prob: float = 0.5,
    round_lr: float | None = None,
    act_lr: float | None = None,
    ridge: float = 1e-6,
    compile: str = "auto",
) -> ReconstructReport:
    """Reconstruct ``qmodel`` block by block, in place, and return a report.

    qmodel: a wrapped, calibrated quantized timm ViT/DeiT/Swin (any per-layer bits; 16 = float layer).
    float_model: its float model (same architecture and device). images: optimisation images [N, 3, H, W].
    loss: ``mse``, ``fisher_diag``, ``fisher_lr`` or ``fisher_dplr``; rank: Fisher snapshots per block (k).
    workdir: checkpoint folder; a later call with the same folder and settings resumes after the last finished
    block and ends with the same weights as an uninterrupted run. max_blocks: stop after this many blocks in
    total (``complete`` is then False; the model is partly reconstructed). device: ``auto`` = the models' device,
    otherwise both models are moved there. progress(fraction, message) is called ~10 times per block; an
    exception raised from it aborts the run, leaving the unfinished block as it was.
    compile: ``auto`` (default: on CUDA, the training step runs under ``torch.compile(mode="reduce-overhead")``,
    i.e. as CUDA graphs, with an eager fallback; ``MPQ_RECONSTRUCT_COMPILE=0`` turns it off), ``on`` or ``off``.

    qmodel runs with its layers' current params (the job's chosen table entries). On return its reconstructed layers
    run with the refined params (learned weight codes on the entries' grids, learned input scales), which are also in
    ``report.params`` ``{layer: LayerParams}``; float weights are unchanged, the model is in eval mode and no
    parameter requires grad.
    """
    options = ReconstructOptions(
        loss=loss, iters=iters, rank=rank, batch_size=batch_size, seed=seed, fisher_images=fisher_images,
        temperature=float(temperature), drop_prob=float(drop_prob), round_lr=round_lr, act_lr=act_lr,
        ridge=float(ridge),
    )
    validate_options(options, images, max_blocks)
    start = time.perf_counter()
    dev = _resolve_device(qmodel, float_model, device)
    qmodel.eval()
    float_model.eval()
    for p in qmodel.parameters():
        p.requires_grad_(False)
    float_flags = [(p, p.requires_grad) for p in float_model.parameters()]
    for p, _ in float_flags:
        p.requires_grad_(False)
    images = images.to(dev, torch.float32)
    if dev.type == "cpu":
        tune_cpu_allocator()  # keep freed activation blocks in the heap (no page faults per iteration)
    if compile not in ("auto", "on", "off"):
        raise ValueError(f"compile must be 'auto', 'on' or 'off'; got {compile!r}")
    run = _Run(qmodel, float_model, images, options, dev, progress, compile)
    report = ReconstructReport(options=asdict(options), total_blocks=len(run.qblocks), device=str(dev),
                               images=len(images))
    try:
        ckpt = BlockCheckpoint(workdir) if workdir is not None else None
        fingerprint = _fingerprint(qmodel, float_model, run.qblocks, images, options) if ckpt else None
        done, previous, note = ckpt.usable_blocks(fingerprint) if ckpt else (0, [], "no workdir")
        report.resumed_blocks, report.resume_note = done, note
        report.blocks = [BlockReport(**b) for b in previous]
        stop = len(run.qblocks) if max_blocks is None else min(max_blocks, len(run.qblocks))
        for i in range(done):
            finished = ckpt.load_block(i)
            report.params.update(finished)
            load_params_(qmodel, finished, rest_float=False)
        if run.fisher and done < stop:
            run.prepare_fisher()
        x_fp = x_q = images
        for i in range(done if done < stop else 0):  # rebuild the caches of the finished blocks (same batches)
            x_fp = map_batches(run.fblocks[i].forward, x_fp, batch_size)
            x_q = map_batches(run.qblocks[i].forward, x_q, batch_size)
        for i in range(done, stop):
            y_fp = map_batches(run.fblocks[i].forward, x_fp, batch_size)
            block_report, refined = run.block(i, x_q, x_fp, y_fp)
            report.blocks.append(block_report)
            report.params.update(refined)
            if ckpt:
                ckpt.save_block(i, refined, fingerprint, [asdict(b) for b in report.blocks])
            run.report_progress(i, 1.0, f"block {i + 1}/{len(run.qblocks)} {run.qblocks[i].name} done")
            if i + 1 < len(run.qblocks):
                x_q = map_batches(run.qblocks[i].forward, x_q, batch_size)
                x_fp = y_fp
        report.complete = len(report.blocks) == len(run.qblocks)
    finally:
        for p, flag in float_flags:
            p.requires_grad_(flag)
        for p in qmodel.parameters():
            p.requires_grad_(False)
        qmodel.eval()
    report.seconds = time.perf_counter() - start
    return report
