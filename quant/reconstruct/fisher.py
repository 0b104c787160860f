"""Fisher snapshots from tail-only passes.

A snapshot of block ``i`` needs ``dKL/dz`` at the block output ``z``, where the KL compares the network's tempered
output with the float network's. Only the part of the network *after* the block depends on ``z``, so instead of a
full model pass (as the reference implementation does) we start from block ``i``'s cached quantized input:

    z = quantized block i (current soft rounding, no QDrop)  on cached X_q   (no autograd)
    logits = float blocks i+1 .. head  on z                                  (autograd w.r.t. z only)

The earlier blocks are never re-run (their quantized outputs are the cache), and the backward pass stops at ``z``:
no parameter gradients anywhere. The tail is the float model (later blocks are not reconstructed yet), which is
what the reference implementation uses (later blocks in ``raw`` mode) and what the KL ~ Fisher expansion around
the float output assumes. The float targets ``softmax(float logits / T)`` are computed once per run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["fisher_snapshot"]


def fisher_snapshot(
    block_fn: Callable[[torch.Tensor], torch.Tensor],
    tail_fn: Callable[[torch.Tensor], torch.Tensor],
    x_in: torch.Tensor,
    y_fp: torch.Tensor,
    target_log_probs: torch.Tensor,
    *,
    temperature: float = 20.0,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One snapshot row pair ``(g, delta)``, each of ``D`` = features of one block output.

    block_fn: the quantized block; tail_fn: the float rest of the network (block output -> logits);
    x_in: cached quantized inputs of the block [N, ...]; y_fp: float block outputs [N, ...];
    target_log_probs: ``log_softmax(float logits / T)`` [N, classes].
    ``g = mean_n |d KL_n / d z_n|`` (per-sample KL, so the scale does not depend on the batch split) and
    ``delta = mean_n |z_n - y_fp_n|``.
    """
    n = len(x_in)
    g_sum = delta_sum = None
    for start in range(0, n, batch_size):
        s = slice(start, min(start + batch_size, n))
        with torch.no_grad():
            z = block_fn(x_in[s])
        z.requires_grad_(True)
        with torch.enable_grad():
            log_q = F.log_softmax(tail_fn(z) / temperature, dim=-1)
            kl = F.kl_div(log_q, target_log_probs[s], log_target=True, reduction="sum")
            (grad,) = torch.autograd.grad(kl, z)
        g_part = grad.detach().abs().reshape(grad.shape[0], -1).sum(dim=0)
        d_part = (z.detach() - y_fp[s]).abs().reshape(grad.shape[0], -1).sum(dim=0)
        g_sum = g_part if g_sum is None else g_sum + g_part
        delta_sum = d_part if delta_sum is None else delta_sum + d_part
    return g_sum / n, delta_sum / n
