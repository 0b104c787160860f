"""A small grid of synthetic images as an embedded PNG, and the report section that shows it.

:func:`grid_png` undoes the model's normalisation (pixels back to [0, 1]), tiles the first ``count`` images
``[N, 3, H, W]`` into a square-ish grid with a 2-pixel gap, upsamples small images so a tile is at least 48 pixels
wide, and returns PNG bytes (Pillow). :func:`preview_report` is the JSON the export stage puts in the report
(``report["synthetic"]``); ``quant.report_synthetic`` renders it as HTML (without importing torch).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["grid_png", "preview_report"]

_MIN_TILE = 48
_GAP = 2


def grid_png(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], count: int = 16) -> bytes:
    """PNG bytes of a grid of the first ``count`` of ``images`` ``[N, 3, H, W]`` (normalised with mean/std)."""
    from PIL import Image

    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be [N, 3, H, W] with N >= 1, got {tuple(images.shape)}")
    shown = images[:count].detach().float().cpu()
    m = torch.as_tensor(mean, dtype=torch.float32, device="cpu").view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device="cpu").view(1, -1, 1, 1)
    pixels = (shown * s + m).clamp(0, 1)
    height, width = pixels.shape[2:]
    scale = max(1, math.ceil(_MIN_TILE / max(height, width)))
    if scale > 1:
        pixels = F.interpolate(pixels, scale_factor=scale, mode="nearest")
    n, (h, w) = pixels.shape[0], pixels.shape[2:]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.ones(3, rows * (h + _GAP) - _GAP, cols * (w + _GAP) - _GAP, device="cpu")
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[:, r * (h + _GAP): r * (h + _GAP) + h, c * (w + _GAP): c * (w + _GAP) + w] = pixels[i]
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def preview_report(images: torch.Tensor, labels: torch.Tensor | None, mean: Sequence[float], std: Sequence[float],
                   stage: dict, count: int = 16) -> dict:
    """``report["synthetic"]``: the stage's numbers, the labels shown and the grid as a base64 PNG."""
    shown = min(count, int(images.shape[0]))
    return {
        "images": int(images.shape[0]),
        "steps": stage.get("steps"),
        "seed": stage.get("seed"),
        "seconds": stage.get("generation_seconds", stage.get("seconds")),
        "entropy": stage.get("entropy"),
        "labels_shown": [] if labels is None else [int(v) for v in labels[:shown]],
        "grid_png": base64.b64encode(grid_png(images, mean, std, shown)).decode("ascii"),
    }
