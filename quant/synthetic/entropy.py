"""The patch-similarity entropy of PSAQ-ViT: how diverse the relations between a block's patch tokens are.

For one image and one block with patch tokens ``z`` ``[N, C]``, the patch-similarity map is the cosine similarity
``S = (z / |z|) (z / |z|)^T`` ``[N, N]``. Its off-diagonal entries are samples of a one-dimensional distribution;
real images give a spread-out distribution (patches of an object, of the background, of edges relate
differently), noise gives a narrow one. The loss maximises the *differential entropy* of that distribution,
estimated with a Gaussian kernel density (resubstitution estimate over ``M`` sampled entries ``s_1..s_M``):

    p(s) = 1/M sum_j N(s - s_j; 0, h^2),     H = -1/M sum_i log p(s_i),

with Silverman's bandwidth ``h = 1.06 * std(s) * M^(-1/5)`` (held constant inside a step: the gradient moves the
samples apart, not the bandwidth). ``M`` pairs are sampled per step (default 128) so the cost is ``M^2`` per
image and block, independent of the number of patches.
"""

from __future__ import annotations

import math

import torch

__all__ = ["kde_entropy", "patch_similarity", "similarity_entropy"]


def patch_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the patch tokens of each image: ``[B, N, C]`` -> ``[B, N, N]`` in [-1, 1]."""
    unit = torch.nn.functional.normalize(tokens, dim=-1, eps=1e-6)
    return unit @ unit.transpose(1, 2)


def kde_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Differential entropy (nats) of each row's distribution by Gaussian KDE: ``[B, M]`` -> ``[B]`` (module doc)."""
    count = samples.shape[1]
    if count < 2:
        raise ValueError(f"need at least 2 samples per row for a density estimate, got {count}")
    std = samples.detach().std(dim=1, keepdim=True).clamp_min(1e-4)
    bandwidth = 1.06 * std * count ** -0.2  # [B, 1]
    diff = (samples.unsqueeze(2) - samples.unsqueeze(1)) / bandwidth.unsqueeze(2)  # [B, M, M]
    log_kernel = -0.5 * diff.pow(2) - torch.log(bandwidth.unsqueeze(2)) - 0.5 * math.log(2 * math.pi)
    log_density = torch.logsumexp(log_kernel, dim=2) - math.log(count)  # [B, M]
    return -log_density.mean(dim=1)


def similarity_entropy(tokens: torch.Tensor, samples: int = 128,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Entropy of the patch-similarity distribution of each image: tokens ``[B, N, C]`` -> ``[B]`` nats.

    ``samples`` off-diagonal entries of each image's ``[N, N]`` map are drawn (the same index pairs for every
    image of the batch; all pairs ``i < j`` when there are fewer).
    """
    n = tokens.shape[1]
    if n < 2:
        raise ValueError(f"need at least 2 patch tokens, got {n}")
    first, second = torch.triu_indices(n, n, offset=1)
    if first.numel() > samples:
        pick = torch.randperm(first.numel(), generator=generator, device="cpu")[:samples]
        first, second = first[pick], second[pick]
    flat = (first * n + second).to(tokens.device)
    values = patch_similarity(tokens).flatten(1)[:, flat]  # [B, M] cosine similarities of the sampled pairs
    return kde_entropy(values)
