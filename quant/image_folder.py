"""ImageNet-style image folders (``ROOT/<class>/<image>.jpg``) decoded into an :class:`~quant.imageset.ImageSet`.

Images are decoded with PIL through torchvision's ``ImageFolder`` and preprocessed with timm's evaluation
transform for the model (``resolve_data_config`` + ``create_transform``, from the model's ``model_info``).
Labels are the class folders' indices in sorted order. Restricting which folders a caller may read
(``MPQ_DATA_ROOT``) is the service's job, not this module's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from quant.imageset import DataLoadError, ImageSet, SourceInfo

__all__ = ["IMAGE_EXTENSIONS", "describe_image_folder", "load_image_folder"]

#: File endings an image folder's images may have (torchvision's ImageFolder list).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def load_image_folder(root: Path, info: dict, max_images: int | None) -> ImageSet:
    """Decode the images under ``root`` with the timm evaluation transform described by ``info`` (a
    ``quant.models.model_info`` dict). ``max_images`` keeps a fixed, seeded random subset (seed 0), so a
    capped calibration set still covers every class; only the kept images are decoded."""
    if not root.is_dir():
        raise DataLoadError(f"image folder not found: {str(root)!r}")
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    transform = create_transform(
        input_size=tuple(info["input_size"]),
        is_training=False,
        interpolation=info["interpolation"],
        mean=tuple(info["mean"]),
        std=tuple(info["std"]),
        crop_pct=info["crop_pct"],
        crop_mode=info["crop_mode"],
    )
    try:
        folder = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataLoadError(
            f"{str(root)!r} is not an image folder ({exc}); expected {str(root)!r}/<class>/<image>.jpg"
        ) from exc
    order = list(range(len(folder)))
    if max_images is not None and max_images < len(order):
        generator = torch.Generator().manual_seed(0)
        order = sorted(torch.randperm(len(order), generator=generator)[:max_images].tolist())
    images, labels = [], []
    for i in order:
        path, label = folder.samples[i]
        try:
            image, _ = folder[i]
        except OSError as exc:
            raise DataLoadError(f"cannot decode image {path!r}: {exc}") from exc
        images.append(image)
        labels.append(label)
    return ImageSet(
        images=torch.stack(images).to(torch.float32), labels=torch.tensor(labels, dtype=torch.int64)
    )


def describe_image_folder(root: Path) -> SourceInfo:
    """Count the images of a folder from its listing (no image is decoded); names it by its last component."""
    if not root.is_dir():
        raise DataLoadError(f"image folder {root.name!r} not found")
    classes = sorted(entry for entry in root.iterdir() if entry.is_dir())
    count = 0
    for folder in classes:
        for _directory, _subdirs, files in os.walk(folder, followlinks=True):
            count += sum(1 for name in files if name.lower().endswith(IMAGE_EXTENSIONS))
    if not classes or count == 0:
        raise DataLoadError(
            f"image folder {root.name!r} has no images in class sub-folders; expected <folder>/<class>/<image>.jpg "
            f"with endings {', '.join(IMAGE_EXTENSIONS)}"
        )
    return SourceInfo(count=count, image_shape=None, labelled=True)
