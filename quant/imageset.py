"""The in-memory image set and its safetensors file format (``images`` and optional ``labels``).

An :class:`ImageSet` holds float32 images ``[N, 3, H, W]`` already resized and normalised for a model, plus
optional int64 labels ``[N]``. On disk it is a safetensors file with exactly those two tensors
(:func:`save_imageset`, :func:`read_imageset_file`); :func:`describe_imageset_file` checks such a file from its
header alone. Which sources exist and how a model shapes them is :mod:`quant.data`'s job.

Failures raise :class:`DataLoadError` (a ``ValueError``) whose message says what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "DataLoadError",
    "ImageSet",
    "SourceInfo",
    "describe_imageset_file",
    "read_imageset_file",
    "read_safetensors",
    "save_imageset",
]

_IMAGESET_KEYS = ("images", "labels")
_HEADER_IMAGE_DTYPES = ("F32", "F16", "BF16", "F64")
_HEADER_LABEL_DTYPES = ("I64", "I32", "I16", "I8", "U8")
_IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class DataLoadError(ValueError):
    """A data source could not be read or does not have the expected format; the message says what to fix."""


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images and optional labels, held in memory on CPU.

    Attributes:
        images: float32 ``[N, 3, H, W]``, resized and normalised for the model.
        labels: int64 ``[N]`` class indices, or ``None`` for unlabelled (calibration-only) data.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.float32 or images.dim() != 4:
            raise DataLoadError(
                f"ImageSet.images must be a float32 tensor [N, 3, H, W]; got {_describe(images)}"
            )
        if images.shape[1] != 3 or images.shape[0] == 0:
            raise DataLoadError(
                "ImageSet.images must be [N, 3, H, W] with N >= 1 and 3 channels; "
                f"got shape {tuple(images.shape)}"
            )
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
                raise DataLoadError(
                    f"ImageSet.labels must be an int64 tensor [N] or None; got {_describe(labels)}"
                )
            if labels.shape[0] != images.shape[0]:
                raise DataLoadError(
                    f"ImageSet.labels has {labels.shape[0]} entries but there are {images.shape[0]} images"
                )

    def __len__(self) -> int:
        """Number of images N."""
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(images [B, 3, H, W], labels [B] or None)`` in order; the last batch may be smaller."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.images[start:stop], None if self.labels is None else self.labels[start:stop]


@dataclass(frozen=True)
class SourceInfo:
    """What a data source holds, found without decoding or loading any image.

    Attributes:
        count: number of images N (for ``builtin:digits`` the size of the requested split).
        image_shape: ``(C, H, W)`` of every image after preprocessing, or None for folders (the model's
            transform decides it).
        labelled: whether the images come with labels.
    """

    count: int
    image_shape: tuple[int, int, int] | None
    labelled: bool


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path``; ``what`` names the file in the not-found message."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DataLoadError(f"{what} file not found: {str(path)!r}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataLoadError(
            f"{str(path)!r} is not a readable safetensors file ({exc}); write it with "
            "safetensors.torch.save_file({'images': images, 'labels': labels}, path) "
            "or quant.data.save_imageset"
        ) from exc


def save_imageset(path: str | Path, imageset: ImageSet) -> None:
    """Write ``imageset`` as a safetensors file readable by :func:`quant.data.load_dataset`.

    The file holds ``images`` float32 ``[N, 3, H, W]`` and, when present, ``labels`` int64 ``[N]``.
    """
    from safetensors.torch import save_file

    if not isinstance(imageset, ImageSet):
        raise TypeError(f"imageset must be an ImageSet; got {type(imageset).__name__}")
    tensors = {"images": imageset.images.contiguous()}
    if imageset.labels is not None:
        tensors["labels"] = imageset.labels.contiguous()
    save_file(tensors, str(path), metadata={"format": "mpq-imageset", "version": "1"})


def read_imageset_file(path: Path) -> ImageSet:
    """Load and check an image-set file: floating ``images`` ``[N, 3, H, W]`` without NaN, integer ``labels``
    ``[N]`` >= 0 if present, nothing else. Images become float32 and labels int64."""
    arrays = read_safetensors(path, "image set")
    unknown = sorted(set(arrays) - set(_IMAGESET_KEYS))
    if unknown:
        raise DataLoadError(
            f"{str(path)!r} has unexpected tensors {unknown}; an image set holds only 'images' "
            "(float [N, 3, H, W]) and optionally 'labels' (int [N])"
        )
    if "images" not in arrays:
        raise DataLoadError(f"{str(path)!r} has no 'images' tensor; store the images as float [N, 3, H, W]")
    images = arrays["images"]
    if images.dtype not in _IMAGE_DTYPES:
        raise DataLoadError(
            "'images' must be floating point (float32 preferred), already resized and normalised for the "
            "model; "
            f"got {images.dtype}; convert with images.float() and apply the model's mean/std"
        )
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise DataLoadError(
            "'images' must have shape [N, 3, H, W] (channels first, 3 channels, N >= 1); "
            f"got {tuple(images.shape)}"
        )
    images = images.to(torch.float32)
    bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
    if bad:
        raise DataLoadError(f"'images' contains NaN or infinite values in {bad} of {images.shape[0]} images")
    labels = arrays.get("labels")
    if labels is not None:
        if labels.dtype not in _LABEL_DTYPES:
            raise DataLoadError(f"'labels' must be an integer tensor (int64 preferred); got {labels.dtype}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataLoadError(
                f"'labels' must have shape [N] with N = {images.shape[0]} (one per image); "
                f"got {tuple(labels.shape)}"
            )
        labels = labels.to(torch.int64)
        if bool((labels < 0).any()):
            raise DataLoadError("'labels' must be class indices >= 0; found negative values")
    return ImageSet(images=images.contiguous(), labels=labels)


def describe_imageset_file(path: Path) -> SourceInfo:
    """Check an image-set file from its safetensors header only (no tensor is read).

    Messages name the file by its last path component only.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise DataLoadError(f"image set file {path.name!r} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            entries = {key: (handle.get_slice(key).get_dtype(), list(handle.get_slice(key).get_shape()))
                       for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:
        raise DataLoadError(f"the image set is not a readable safetensors file ({type(exc).__name__})") from exc
    unknown = sorted(set(entries) - set(_IMAGESET_KEYS))
    if unknown:
        raise DataLoadError(
            f"the image set has unexpected tensors {unknown}; it holds only 'images' (float [N, 3, H, W]) and "
            "optionally 'labels' (int [N])"
        )
    if "images" not in entries:
        raise DataLoadError("the image set has no 'images' tensor; store the images as float [N, 3, H, W]")
    dtype, shape = entries["images"]
    if dtype not in _HEADER_IMAGE_DTYPES:
        raise DataLoadError(f"'images' must be floating point (float32 preferred); got {dtype}")
    if len(shape) != 4 or shape[1] != 3 or shape[0] == 0:
        raise DataLoadError(
            f"'images' must have shape [N, 3, H, W] (channels first, 3 channels, N >= 1); got {shape}"
        )
    labels = entries.get("labels")
    if labels is not None:
        if labels[0] not in _HEADER_LABEL_DTYPES:
            raise DataLoadError(f"'labels' must be an integer tensor (int64 preferred); got {labels[0]}")
        if labels[1] != [shape[0]]:
            raise DataLoadError(f"'labels' must have shape [N] with N = {shape[0]}; got {labels[1]}")
    return SourceInfo(count=int(shape[0]), image_shape=(3, int(shape[2]), int(shape[3])),
                      labelled=labels is not None)
