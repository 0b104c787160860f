"""Reconstruction of one block: train AdaRound offsets and input scales, return the refined params as values.

The block's layers start from their table entries (``base``). Training loads training values into them: a
:class:`~quant.quantizers.training.SoftRoundedWeight` per quantized weight and learnable scales (with QDrop) per
static uniform input (``qdrop.training_inputs``). When the block is done the layers get the refined params:
hard-rounded weights (``WeightParams`` with learned ``codes`` on the entry's grid) and the learned input scales. If the
refined block does not lower its own objective on all optimisation images (no QDrop) compared with the entries it
started from, the entries are kept (``kept="ptq"``). An interrupted block gets its entries back unchanged.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

import torch

from ..quantizers import LayerParams, WeightParams
from ..quantizers.training import hardened, soft_rounded
from ..wrap import load_params_
from .adaround import BetaSchedule
from .blocks import block_quant_layers, map_batches, run_blocks
from .compile import adam_kwargs, maybe_compile
from .fisher import fisher_snapshot
from .losses import FisherState, kl_loss, mse_loss
from .options import BlockReport
from .qdrop import MaskSource, training_inputs

__all__ = ["block_seed", "train_block"]


def block_seed(seed: int, index: int) -> int:
    """The seed of block ``index`` (-1: the run's Fisher image choice) of a run seeded with ``seed``."""
    return int.from_bytes(hashlib.sha256(f"fimaq:{seed}:{index}".encode()).digest()[:7], "little")


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


def train_block(run, index: int, x_q: torch.Tensor, x_fp: torch.Tensor,
                y_fp: torch.Tensor) -> tuple[BlockReport, dict[str, LayerParams]]:
    """Reconstruct block ``index`` of ``run`` (``engine._Run``) from its cached quantized input ``x_q``, float input
    ``x_fp`` and float output ``y_fp``; returns the report and the block's refined params (already loaded)."""
    opts, qblock = run.options, run.qblocks[index]
    head = qblock.kind == "head"
    start, cpu_start = time.perf_counter(), time.process_time()
    layers = block_quant_layers(run.qmodel, qblock)
    base = {name: layer.params for name, layer in layers.items()}
    out_before = map_batches(qblock.forward, x_q, opts.batch_size)
    seed = block_seed(opts.seed, index)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    mix = opts.drop_prob < 1.0
    masks = MaskSource(opts.drop_prob, seed, run.device)
    soft = {name: soft_rounded(layers[name].weight, p.weight) for name, p in base.items()
            if isinstance(p.weight, WeightParams)}
    inputs = {name: training_inputs(p.inputs, masks if mix else None) for name, p in base.items()}
    scales = [scale for t in inputs.values() for scale in t.scales]
    train = {name: LayerParams(soft.get(name, p.weight), inputs[name].train) for name, p in base.items()}
    paused = {name: LayerParams(soft.get(name, p.weight), inputs[name].paused) for name, p in base.items()}
    groups = [{"params": [s.alpha for s in soft.values()], "lr": opts.resolved_round_lr}] if soft else []
    groups += [{"params": scales, "lr": opts.resolved_act_lr}] if scales else []
    optimizer = torch.optim.Adam(groups, **adam_kwargs(run.device)) if groups else None
    act_group = optimizer.param_groups[-1] if scales else None
    beta = BetaSchedule(opts.iters, opts.warmup, opts.beta_start, opts.beta_end)
    use_fisher = run.fisher and not head
    state = FisherState(opts.loss, opts.ridge) if use_fisher else None
    snap_at = {math.floor(j * opts.iters / opts.rank) for j in range(opts.rank)} if use_fisher else set()
    tail = run.fblocks[index + 1:]
    snapshot_seconds, snapshot_cpu = 0.0, 0.0
    n, batch = len(x_q), min(opts.batch_size, len(x_q))
    every = max(opts.iters // 10, 1)
    iters = opts.iters if soft or scales else 0  # nothing to learn (e.g. a float block): no training
    tail_from = opts.iters - max(opts.iters // 10, 1)
    loss_sum = torch.zeros((), device=run.device)  # training loss of the last 10 %, summed on the device

    def block_loss(xq: torch.Tensor, xf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.lerp(xf, xq, masks(xq.shape, xq.dtype)) if mix else xq
        out = qblock.forward(x)
        if head:
            return kl_loss(out, target)
        return state(out, target) if use_fisher else mse_loss(out, target)

    step_loss = maybe_compile(block_loss, run.device, run.compile)
    refined = base
    rng = torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else [],
                                enabled=run.device.type != "cpu")
    try:
        load_params_(run.qmodel, train, rest_float=False)
        with rng:
            if run.device.type == "cuda":
                torch.cuda.manual_seed(seed)  # QDrop masks (device RNG), restored on exit
            for it in range(iters):
                if it in snap_at:
                    t0, c0 = time.perf_counter(), time.process_time()
                    load_params_(run.qmodel, paused, rest_float=False)
                    g, delta = fisher_snapshot(
                        qblock.forward, lambda z: run_blocks(tail, z), x_q[run.fisher_idx], y_fp[run.fisher_idx],
                        run.target_log_probs, temperature=opts.temperature, batch_size=run.snapshot_batch)
                    load_params_(run.qmodel, train, rest_float=False)
                    state.add(g, delta)
                    snapshot_seconds += time.perf_counter() - t0
                    snapshot_cpu += time.process_time() - c0
                idx = torch.randperm(n, generator=gen, device=run.device)[:batch]
                # the iteration that sets new Fisher normalisers runs eagerly (they must not live in a graph)
                fn = block_loss if use_fisher and state.renormalize else step_loss
                rec = fn(x_q[idx], x_fp[idx], y_fp[idx])
                total = rec
                if soft and beta.active(it):
                    b = beta(it)
                    total = total + opts.round_weight * sum(s.regularizer(b) for s in soft.values())
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
                    run.report_progress(index, (it + 1) / opts.iters,
                                        f"block {index + 1}/{len(run.qblocks)} {qblock.name}: "
                                        f"iteration {it + 1}/{opts.iters}")
        refined = {name: LayerParams(hardened(soft[name]) if name in soft else p.weight, inputs[name].final())
                   for name, p in base.items()}
    finally:
        load_params_(run.qmodel, refined, rest_float=False)  # an interrupted block gets its entries back
    losses_counted = max(iters - tail_from, 0) if iters else 0
    out_after = map_batches(qblock.forward, x_q, opts.batch_size)
    objective = _objective(head, state)
    with torch.no_grad():
        before, after = objective(out_before, y_fp), objective(out_after, y_fp)
    kept = "reconstructed"
    if not after <= before:  # no better (or NaN) on its own objective than the entries it started from: keep those
        kept = "ptq"
        refined = base
        load_params_(run.qmodel, base, rest_float=False)
        out_after = out_before
    report = BlockReport(
        index=index, name=qblock.name, kind=qblock.kind, loss="kl" if head else opts.loss,
        metric="kl" if head else "mse", error_before=_error(out_before, y_fp, head),
        error_after=_error(out_after, y_fp, head), objective_before=float(before),
        objective_after=float(after), kept=kept,
        train_loss=float(loss_sum) / max(losses_counted, 1), iters=iters,
        seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start,
        snapshot_seconds=snapshot_seconds, snapshot_cpu_seconds=snapshot_cpu,
        snapshots=state.rank if state is not None else 0, rounded_layers=len(soft),
        learned_act_scales=len(scales),
    )
    return report, refined
