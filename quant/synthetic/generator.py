"""Synthetic calibration images from the float model itself: seeded noise optimised with Adam (PSAQ-ViT style).

:func:`synthesize_images` starts from Gaussian noise in the model's normalised input space (one
``torch.Generator`` seeded with ``seed`` draws the noise, the target classes and every step's sampled patch pairs,
so a seed gives the same images on the same machine and thread count), and runs ``steps`` Adam steps on
:func:`~quant.synthetic.objective.synthetic_loss`, clamping the pixels after each step to the range the model's
normalisation maps ``[0, 1]`` to. Labels are the float model's own predictions on the final images (there are no
true labels; sensitivity uses them as if they were).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .hooks import PatchTokenCapture, token_sites
from .objective import LossWeights, synthetic_loss

__all__ = ["DEFAULT_STEPS", "SyntheticImages", "SyntheticSettings", "synthesize_images"]

#: Adam steps per batch when a job does not say (128 vit-digits images: about 2 s of CPU per step on 2 threads).
DEFAULT_STEPS = 30


@dataclass(frozen=True)
class SyntheticSettings:
    """How the images are optimised: Adam ``steps`` at learning rate ``lr`` on batches of ``batch_size`` images,
    ``samples`` similarity entries per image and block for the entropy, the loss ``weights``."""

    steps: int = DEFAULT_STEPS
    lr: float = 0.2
    batch_size: int = 128
    samples: int = 128
    weights: LossWeights = field(default_factory=LossWeights)


@dataclass
class SyntheticImages:
    """The generated set: ``images`` float32 ``[N, 3, H, W]`` (normalised), ``labels`` int64 ``[N]`` (the float
    model's predictions), ``targets`` int64 ``[N]`` (the classes they were optimised towards), ``history``
    (per step, mean over batches: ``entropy``, ``cross_entropy``, ``tv``, ``l2``, ``loss``) and ``seconds``."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    history: list[dict[str, float]]
    seconds: float


def _bounds(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (0.0 - m) / s, (1.0 - m) / s


def synthesize_images(model: nn.Module, count: int, input_shape: tuple[int, int, int], *, mean: Sequence[float],
                      std: Sequence[float], num_classes: int, seed: int = 0,
                      settings: SyntheticSettings | None = None,
                      progress: Callable[[float, str], None] | None = None) -> SyntheticImages:
    """Generate ``count`` images of ``input_shape`` ``(C, H, W)`` for ``model`` (module doc).

    ``mean``/``std``: the model's per-channel normalisation (pixels in [0, 1]); ``num_classes``: logits width.
    ``progress(fraction, message)`` is called after every step. Raises ``NoAttentionBlocksError`` for a model
    without attention blocks. The model's parameters are left untouched (gradients flow into the images only).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    settings = settings or SyntheticSettings()
    if settings.steps < 0:
        raise ValueError(f"steps must be >= 0, got {settings.steps}")
    sites = token_sites(model)
    start = time.perf_counter()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(int(seed))
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    low, high = _bounds(mean, std, device)
    targets = torch.randint(0, num_classes, (count,), generator=generator, device="cpu")
    noise = torch.randn((count, *input_shape), generator=generator, device="cpu")
    batches = [(i, min(i + settings.batch_size, count)) for i in range(0, count, settings.batch_size)]
    history: list[dict[str, float]] = [{} for _ in range(settings.steps)]
    done, total = 0, max(len(batches) * settings.steps, 1)
    out = []
    try:
        with PatchTokenCapture(model, sites) as capture:
            for lo, hi in batches:
                x = torch.max(torch.min(noise[lo:hi].to(device), high), low).requires_grad_(True)
                t = targets[lo:hi].to(device)
                optimizer = torch.optim.Adam([x], lr=settings.lr)
                for step in range(settings.steps):
                    optimizer.zero_grad(set_to_none=True)
                    loss, parts = synthetic_loss(model, capture, x, t, settings.weights, samples=settings.samples,
                                                 generator=generator)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        x.copy_(torch.max(torch.min(x, high), low))
                    share = (hi - lo) / count
                    for key, value in parts.items():
                        history[step][key] = history[step].get(key, 0.0) + share * value
                    done += 1
                    if progress is not None:
                        progress(done / total, f"step {step + 1}/{settings.steps}, images {lo}-{hi - 1} of {count}, "
                                 f"entropy {parts['entropy']:.3f}")
                out.append(x.detach())
            images = torch.cat(out).float()
            with torch.no_grad():
                labels = torch.cat([model(images[lo:hi]).argmax(1) for lo, hi in batches])
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return SyntheticImages(images.cpu().contiguous(), labels.cpu().to(torch.int64), targets,
                           history, time.perf_counter() - start)
