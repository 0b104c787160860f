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
grid values in ``layer.weight``; the block is checkpointed. Safeguard (ours): if the hard-rounded block does not
lower its own objective on all optimisation images (no QDrop) compared with the PTQ block, the PTQ block is kept
(calibrated scales, nearest rounding) and the report says ``kept="ptq"``.

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
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..wrap import quant_layers, set_quant_enabled_
from .adaround import BetaSchedule, attach_adaround, detach_adaround
from .allocator import tune_cpu_allocator
from .blocks import Block, block_quant_layers, discover_blocks, map_batches, run_blocks
from .checkpoint import BlockCheckpoint, tensor_digest
from .fisher import fisher_snapshot
from .losses import FISHER_LOSSES, FisherState, kl_loss, mse_loss
from .options import BlockReport, ReconstructOptions, ReconstructReport, validate_options
from .qdrop import MaskSource, TrainingActivations

__all__ = ["reconstruct_"]

_log = logging.getLogger(__name__)

#: progress(fraction in [0, 1], message)
Progress = Callable[[float, str], None]


def _adam_kwargs(device: torch.device) -> dict:
    """One fused Adam kernel per parameter group (CPU and CUDA) where this torch has it."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def _compile_mode(device: torch.device, setting: str) -> bool:
    if setting == "auto":
        return device.type == "cuda" and os.environ.get("MPQ_RECONSTRUCT_COMPILE", "1") != "0"
    return setting == "on"


def _maybe_compile(fn: Callable, device: torch.device, setting: str) -> Callable:
    """``fn`` compiled with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: the fixed-shape forward and
    backward replay as captured graphs) when ``setting`` is ``on``, or ``auto`` on a CUDA device; otherwise ``fn``.
    If compilation fails at the first call, the eager ``fn`` is used from then on (the failure is logged)."""
    if not _compile_mode(device, setting):
        return fn
    compiled = torch.compile(fn, mode="reduce-overhead" if device.type == "cuda" else "default", dynamic=False)
    state = {"fn": compiled}

    def call(*args):
        try:
            out = state["fn"](*args)
            return out.clone() if state["fn"] is compiled else out  # cudagraph outputs are overwritten on replay
        except Exception as exc:  # any compiler failure: fall back to the eager step
            if state["fn"] is fn:
                raise
            _log.warning("torch.compile of the reconstruction step failed (%s); using eager mode", exc)
            state["fn"] = fn
            return fn(*args)

    return call


def _block_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"fimaq:{seed}:{index}".encode()).digest()[:7], "little")


def _block_state(model: nn.Module, block: Block) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if block.owns(k)}


def _fingerprint(qmodel, float_model, qblocks, images, options) -> dict:
    bits = {name: [layer.wbits, layer.abits] for name, layer in quant_layers(qmodel).items()}
    config = {
        "options": asdict(options),
        "images": tensor_digest({"images": images}),
        "blocks": [b.name for b in qblocks],
        "bits": bits,
        "float_model": tensor_digest(float_model.state_dict()),
    }
    config_digest = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()
    owned = set()
    per_block = []
    for block in qblocks:
        state = _block_state(qmodel, block)
        owned.update(state)
        per_block.append(tensor_digest(state))
    rest = {k: v for k, v in qmodel.state_dict().items() if k not in owned}
    return {"config": {"digest": config_digest, "other_tensors": tensor_digest(rest)}, "blocks": per_block}


def _error(out: torch.Tensor, y: torch.Tensor, head: bool) -> float:
    """Reported block error: KL to the float logits (head) or mean squared error of the block output."""
    return float(kl_loss(out, y)) if head else float((out - y).pow(2).mean())


def _objective(head: bool, state: FisherState | None) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """The block's training objective on all optimisation images (final Fisher rows and normalisers)."""
    if head:
        return lambda out, y: float(kl_loss(out, y))
    if state is None or state.rank == 0:
        return lambda out, y: float(mse_loss(out, y))
    return lambda out, y: float(sum(v / state.norms[k] for k, v in state.terms(out, y).items()))


@torch.no_grad()
def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    for k, v in saved.items():
        current[k].copy_(v)


@torch.no_grad()
def _round_to_nearest_(layers, names) -> None:
    """Store the nearest-rounded grid values (what the weight quantizer computes) in ``layer.weight``."""
    for name in names:
        layer = layers[name]
        layer.weight.copy_(layer.weight_quantizer(layer.weight))


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
        gen = torch.Generator(device="cpu").manual_seed(_block_seed(opts.seed, -1))
        # drawn on the CPU on purpose: the same snapshot images on every device
        idx = torch.randperm(n, generator=gen, device="cpu")[: min(opts.fisher_images, n)].sort().values
        self.fisher_idx = idx.to(self.device)
        logits = map_batches(self.float_model, self.images[self.fisher_idx], opts.batch_size)
        self.target_log_probs = F.log_softmax(logits / opts.temperature, dim=-1)

    def reconstruct_block(self, index: int, x_q: torch.Tensor, x_fp: torch.Tensor, y_fp: torch.Tensor) -> BlockReport:
        opts, qblock = self.options, self.qblocks[index]
        head = qblock.kind == "head"
        start, cpu_start = time.perf_counter(), time.process_time()
        layers = block_quant_layers(self.qmodel, qblock)
        out_before = map_batches(qblock.forward, x_q, opts.batch_size)
        saved = {k: v.clone() for k, v in _block_state(self.qmodel, qblock).items()}
        seed = _block_seed(opts.seed, index)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        masks = MaskSource(opts.drop_prob, seed, self.device)
        attached = attach_adaround(layers)
        qdrop = TrainingActivations(layers, opts.drop_prob, masks)
        scales = qdrop.scales
        for scale in scales:
            scale.requires_grad_(True)
        groups = ([{"params": [a.alpha for a in attached.values()], "lr": opts.resolved_round_lr}] if attached else [])
        groups += [{"params": scales, "lr": opts.resolved_act_lr}] if scales else []
        optimizer = torch.optim.Adam(groups, **_adam_kwargs(self.device)) if groups else None
        act_group = optimizer.param_groups[-1] if scales else None
        beta = BetaSchedule(opts.iters, opts.warmup, opts.beta_start, opts.beta_end)
        use_fisher = self.fisher and not head
        state = FisherState(opts.loss, opts.ridge) if use_fisher else None
        snap_at = {math.floor(j * opts.iters / opts.rank) for j in range(opts.rank)} if use_fisher else set()
        tail = self.fblocks[index + 1:]
        snapshot_seconds, snapshot_cpu = 0.0, 0.0
        n, batch = len(x_q), min(opts.batch_size, len(x_q))
        every = max(opts.iters // 10, 1)
        iters = opts.iters if attached or scales else 0  # nothing to learn (e.g. a float block): no training
        tail_from = opts.iters - max(opts.iters // 10, 1)
        loss_sum = torch.zeros((), device=self.device)  # training loss of the last 10 %, summed on the device
        mix = opts.drop_prob < 1.0

        def block_loss(xq: torch.Tensor, xf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            x = torch.lerp(xf, xq, masks(xq.shape, xq.dtype)) if mix else xq
            out = qblock.forward(x)
            if head:
                return kl_loss(out, target)
            return state(out, target) if use_fisher else mse_loss(out, target)

        step_loss = _maybe_compile(block_loss, self.device, self.compile)
        finished = False
        rng = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [],
                                    enabled=self.device.type != "cpu")
        try:
            with rng:
                if self.device.type == "cuda":
                    torch.cuda.manual_seed(seed)  # QDrop masks (device RNG), restored on exit
                for it in range(iters):
                    if it in snap_at:
                        t0, c0 = time.perf_counter(), time.process_time()
                        with qdrop.paused():
                            g, delta = fisher_snapshot(
                                qblock.forward, lambda z: run_blocks(tail, z), x_q[self.fisher_idx],
                                y_fp[self.fisher_idx], self.target_log_probs,
                                temperature=opts.temperature, batch_size=self.snapshot_batch,
                            )
                        state.add(g, delta)
                        snapshot_seconds += time.perf_counter() - t0
                        snapshot_cpu += time.process_time() - c0
                    idx = torch.randperm(n, generator=gen, device=self.device)[:batch]
                    # the iteration that sets new Fisher normalisers runs eagerly (they must not live in a graph)
                    fn = block_loss if use_fisher and state.renormalize else step_loss
                    rec = fn(x_q[idx], x_fp[idx], y_fp[idx])
                    total = rec
                    if attached and beta.active(it):
                        b = beta(it)
                        total = total + opts.round_weight * sum(a.regularizer(b) for a in attached.values())
                    if optimizer is not None:
                        optimizer.zero_grad(set_to_none=True)
                    if total.requires_grad:
                        total.backward()
                        optimizer.step()
                    if act_group is not None:  # cosine decay of the activation-scale learning rate to 0
                        act_group["lr"] = opts.resolved_act_lr * 0.5 * (1.0 + math.cos(math.pi * (it + 1) / opts.iters))
                    if it >= tail_from:
                        loss_sum += rec.detach()
                    if (it + 1) % every == 0:
                        self.report_progress(index, (it + 1) / opts.iters,
                                             f"block {index + 1}/{len(self.qblocks)} {qblock.name}: "
                                             f"iteration {it + 1}/{opts.iters}")
            finished = True
        finally:
            qdrop.remove()
            for scale in scales:
                scale.requires_grad_(False)
                scale.grad = None
            if finished:
                detach_adaround(layers, attached)
            else:  # interrupted: put the block back exactly as it was
                for name, ada in attached.items():
                    layers[name].weight_quantizer = ada.original[0]
                _restore(self.qmodel, saved)
        losses_counted = max(iters - tail_from, 0) if iters else 0
        out_after = map_batches(qblock.forward, x_q, opts.batch_size)
        objective = _objective(head, state)
        with torch.no_grad():
            before, after = objective(out_before, y_fp), objective(out_after, y_fp)
        kept = "reconstructed"
        if after > before:  # no better than PTQ on its own objective: keep the PTQ block, nearest rounding
            kept = "ptq"
            _restore(self.qmodel, saved)
            _round_to_nearest_(layers, attached)
            out_after = out_before
        return BlockReport(
            index=index, name=qblock.name, kind=qblock.kind, loss="kl" if head else opts.loss,
            metric="kl" if head else "mse", error_before=_error(out_before, y_fp, head),
            error_after=_error(out_after, y_fp, head), objective_before=float(before),
            objective_after=float(after), kept=kept,
            train_loss=float(loss_sum) / max(losses_counted, 1), iters=iters,
            seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start,
            snapshot_seconds=snapshot_seconds, snapshot_cpu_seconds=snapshot_cpu,
            snapshots=state.rank if state is not None else 0, rounded_layers=len(attached),
            learned_act_scales=len(scales),
        )


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

    On return every weight is a point of its quantizer's integer grid, learned activation scales are kept, all
    quantizers are enabled, the model is in eval mode and no parameter requires grad.
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
    set_quant_enabled_(qmodel, True, True)
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
        with torch.no_grad():
            current = qmodel.state_dict()
            for i in range(done):
                for k, v in ckpt.load_block(i).items():
                    current[k].copy_(v.to(current[k].device))
        if run.fisher and done < stop:
            run.prepare_fisher()
        x_fp = x_q = images
        for i in range(done if done < stop else 0):  # rebuild the caches of the finished blocks (same batches)
            x_fp = map_batches(run.fblocks[i].forward, x_fp, batch_size)
            x_q = map_batches(run.qblocks[i].forward, x_q, batch_size)
        for i in range(done, stop):
            y_fp = map_batches(run.fblocks[i].forward, x_fp, batch_size)
            try:
                block_report = run.reconstruct_block(i, x_q, x_fp, y_fp)
            except RuntimeError as exc:
                # A compiled step can also fail after its first call (e.g. in a CUDA-graph replay during backward);
                # the interrupted block was put back as it was, so it is trained again eagerly. Out of memory
                # is the job's to report, not a compiler failure.
                if not _compile_mode(run.device, run.compile) or isinstance(exc, torch.OutOfMemoryError):
                    raise
                _log.warning("compiled reconstruction of block %d failed (%s); retrying it eagerly", i, exc)
                run.compile = "off"
                block_report = run.reconstruct_block(i, x_q, x_fp, y_fp)
            report.blocks.append(block_report)
            if ckpt:
                ckpt.save_block(i, _block_state(qmodel, run.qblocks[i]), fingerprint,
                                [asdict(b) for b in report.blocks])
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
