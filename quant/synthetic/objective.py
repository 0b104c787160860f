"""The objective the synthetic images minimise (PSAQ-ViT, with a small image prior).

    L = -w_ent * mean_blocks H(similarity of block patch tokens)   (diversity of patch relations, ``entropy``)
        + w_ce * CE(model(x), t)                                    (one random target class per image)
        + w_tv * TV(x) + w_l2 * mean(x^2)                           (image prior in the normalised space)

``H`` is :func:`~quant.synthetic.entropy.similarity_entropy` averaged over images and attention blocks; ``t`` is
drawn uniformly over the classes so the set covers them; TV is the mean absolute difference of neighbouring
pixels. All terms are per image means, so the weights do not depend on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .entropy import similarity_entropy
from .hooks import PatchTokenCapture

__all__ = ["LossWeights", "synthetic_loss", "total_variation"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of the objective (module doc)."""

    entropy: float = 1.0
    cross_entropy: float = 1.0
    tv: float = 1.0
    l2: float = 0.001


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertically and horizontally neighbouring pixels of ``[B, C, H, W]``: ``[]``."""
    dh = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean()
    dw = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean()
    return dh + dw


def synthetic_loss(model: nn.Module, capture: PatchTokenCapture, images: torch.Tensor, targets: torch.Tensor,
                   weights: LossWeights, *, samples: int = 128,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective for ``images`` ``[B, 3, H, W]`` (normalised) and ``targets`` ``[B]``; returns the scalar loss
    and its parts ``{"entropy", "cross_entropy", "tv", "l2", "loss"}`` as floats (entropy in nats, block mean)."""
    capture.clear()
    logits = model(images)
    if not capture.tokens:
        raise RuntimeError("the forward pass did not reach any attention block")
    entropy = torch.stack([similarity_entropy(t, samples, generator).mean() for t in capture.tokens]).mean()
    capture.clear()
    ce = F.cross_entropy(logits, targets)
    tv = total_variation(images)
    l2 = images.pow(2).mean()
    loss = -weights.entropy * entropy + weights.cross_entropy * ce + weights.tv * tv + weights.l2 * l2
    parts = {key: float(value.detach()) for key, value in
             (("entropy", entropy), ("cross_entropy", ce), ("tv", tv), ("l2", l2), ("loss", loss))}
    return loss, parts
