"""The built-in digits dataset: scikit-learn's 1,797 handwritten 8x8 digits, shipped as raw pixels.

``quant/builtin/assets/digits.safetensors`` holds the pixels together with fixed, seeded index arrays for the
``train`` (1,297 images), ``calib`` (256 images, a subset of ``train``) and ``test`` (500 images) splits.
Pixels (0..16) are scaled to [0, 1], upsampled bilinearly to the model's input size, repeated to 3 channels
and normalised with the model's mean/std (for the built-in models: :data:`DIGITS_MEAN` / :data:`DIGITS_STD`),
exactly as in training. scikit-learn is not needed at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from quant.builtin import ASSETS_DIR
from quant.imageset import DataLoadError, ImageSet, read_safetensors

__all__ = [
    "DIGITS_MEAN",
    "DIGITS_PATH",
    "DIGITS_SPLITS",
    "DIGITS_STD",
    "digits_split_size",
    "load_builtin_digits",
]

#: Per-channel mean of the upsampled train digits (pixels scaled to [0, 1]), rounded; used by the built-ins.
DIGITS_MEAN = (0.305, 0.305, 0.305)
#: Per-channel standard deviation of the upsampled train digits, rounded; used by the built-in models.
DIGITS_STD = (0.324, 0.324, 0.324)
#: The shipped digits file: ``images`` uint8 [1797, 8, 8] (values 0..16), ``labels`` int64 [1797] and int64
#: index arrays ``train_idx`` [1297], ``calib_idx`` [256] (subset of train) and ``test_idx`` [500].
DIGITS_PATH = ASSETS_DIR / "digits.safetensors"
#: Splits of the built-in digits.
DIGITS_SPLITS = ("train", "calib", "test")


def load_builtin_digits(
    split: Literal["train", "calib", "test"],
    img_size: int = 32,
    mean: Sequence[float] = DIGITS_MEAN,
    std: Sequence[float] = DIGITS_STD,
) -> ImageSet:
    """Load one split of the built-in digits, preprocessed exactly as the built-in models were trained.

    Args:
        split: ``"train"`` (1,297 images), ``"calib"`` (256 images, a fixed subset of train) or ``"test"``
            (500 images, disjoint from train).
        img_size: output side in pixels; the 8x8 digits are upsampled bilinearly (``align_corners=False``).
        mean, std: per-channel normalisation (3 values each) applied to pixels scaled to [0, 1].
            ``mean=(0, 0, 0), std=(1, 1, 1)`` gives the un-normalised [0, 1] images.

    Returns:
        ImageSet with images float32 ``[N, 3, img_size, img_size]`` and labels int64 ``[N]`` (digits 0..9).
    """
    if split not in DIGITS_SPLITS:
        raise DataLoadError(f"unknown digits split {split!r}; choose one of {', '.join(DIGITS_SPLITS)}")
    if not isinstance(img_size, int) or img_size < 1:
        raise DataLoadError(f"img_size must be a positive int; got {img_size!r}")
    mean_t, std_t = _channel_stats(mean, "mean"), _channel_stats(std, "std")
    if bool((std_t <= 0).any()):
        raise DataLoadError(f"std must be positive in every channel; got {tuple(std)}")
    arrays = read_safetensors(DIGITS_PATH, "built-in digits")
    idx = arrays[f"{split}_idx"]
    pixels = arrays["images"][idx].to(torch.float32).div_(16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    images = F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = (images.expand(-1, 3, -1, -1) - mean_t) / std_t
    return ImageSet(images=images.contiguous(), labels=arrays["labels"][idx].to(torch.int64))


def digits_split_size(split: str) -> int:
    """Number of images in one split, read from the asset's header."""
    from safetensors import safe_open

    with safe_open(str(DIGITS_PATH), framework="pt") as handle:
        return int(handle.get_slice(f"{split}_idx").get_shape()[0])


def _channel_stats(values: Sequence[float], name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise DataLoadError(f"{name} must be 3 numbers (one per channel); got {values!r}") from exc
    if t.numel() != 3:
        raise DataLoadError(f"{name} must be 3 numbers (one per channel); got {values!r}")
    return t.view(1, 3, 1, 1)
