"""Image sets for calibration and evaluation: the built-in digits, safetensors uploads and image folders.

Every source ends up as an :class:`ImageSet`: float32 images ``[N, 3, H, W]`` already resized and normalised
for the model, plus optional int64 labels ``[N]``. Sources (the ``source`` string of :func:`load_dataset`):

- ``builtin:digits``: scikit-learn's 1,797 handwritten 8x8 digits, shipped as raw pixels in
  ``quant/builtin/assets/digits.safetensors`` together with fixed, seeded index arrays for the
  ``train`` (1,297 images), ``calib`` (256 images, a subset of ``train``) and ``test`` (500 images) splits.
  Pixels (0..16) are scaled to [0, 1], upsampled bilinearly to the model's input size, repeated to 3 channels
  and normalised with the model's mean/std (for the built-in models: :data:`DIGITS_MEAN` /
  :data:`DIGITS_STD`), exactly as in training. scikit-learn is not needed at run time.
- a path to a ``.safetensors`` file holding ``images`` (float [N, 3, H, W], already preprocessed) and
  optionally ``labels`` (integer [N]); see :func:`save_imageset`.
- ``folder:PATH``: an ImageNet-style folder (``PATH/<class>/<image>.jpg``), decoded with PIL through
  torchvision's ``ImageFolder`` and preprocessed with timm's evaluation transform for the model
  (``resolve_data_config`` + ``create_transform``). Labels are the class folders' indices in sorted order.
  Restricting which folders a caller may read (``MPQ_DATA_ROOT``) is the service's job, not this module's.

Failures raise :class:`DataLoadError` (a ``ValueError``) whose message says what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from quant.builtin import ASSETS_DIR

__all__ = [
    "DIGITS_MEAN",
    "DIGITS_PATH",
    "DIGITS_SPLITS",
    "DIGITS_STD",
    "DataLoadError",
    "ImageSet",
    "SourceInfo",
    "describe_source",
    "load_builtin_digits",
    "load_dataset",
    "save_imageset",
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

_BUILTIN_PREFIX = "builtin:"
_FOLDER_PREFIX = "folder:"
_BUILTIN_DATASETS = ("digits",)
_IMAGESET_KEYS = ("images", "labels")
#: File endings an image folder's images may have (torchvision's ImageFolder list).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
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


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
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


def _digits_arrays() -> dict[str, torch.Tensor]:
    return _read_safetensors(DIGITS_PATH, "built-in digits")


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
    arrays = _digits_arrays()
    idx = arrays[f"{split}_idx"]
    pixels = arrays["images"][idx].to(torch.float32).div_(16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    images = F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = (images.expand(-1, 3, -1, -1) - mean_t) / std_t
    return ImageSet(images=images.contiguous(), labels=arrays["labels"][idx].to(torch.int64))


def _channel_stats(values: Sequence[float], name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise DataLoadError(f"{name} must be 3 numbers (one per channel); got {values!r}") from exc
    if t.numel() != 3:
        raise DataLoadError(f"{name} must be 3 numbers (one per channel); got {values!r}")
    return t.view(1, 3, 1, 1)


def load_dataset(
    source: str,
    *,
    split: str = "calib",
    model_name: str | None = None,
    arch_kwargs: dict | None = None,
    max_images: int | None = None,
) -> ImageSet:
    """Load calibration or evaluation images from a built-in dataset, a safetensors file or an image folder.

    Args:
        source: ``builtin:digits``, ``folder:PATH`` or a path to a safetensors file (see the module doc).
        split: for ``builtin:digits`` one of ``train``, ``calib``, ``test``; ignored by the other sources
            (a file or a folder is one split).
        model_name: the model the images are for (``builtin:NAME`` or a timm architecture name, as in
            :func:`quant.models.build_model`). Decides image size and normalisation for ``builtin:digits``
            (default: 32x32 with :data:`DIGITS_MEAN`/:data:`DIGITS_STD`) and the timm transform for folders
            (required there). For safetensors files it is used only to check the image size.
        arch_kwargs: the model's timm keyword overrides (``img_size``...), see ``quant.models.model_info``.
        max_images: keep at most this many images; a folder keeps a fixed, seeded random subset (seed 0) so a
            capped calibration set still covers every class, the other sources keep the first ones.

    Returns:
        ImageSet (images float32 ``[N, 3, H, W]``, labels int64 ``[N]`` or None).
    """
    if not isinstance(source, str) or not source:
        raise DataLoadError(f"data source must be a non-empty string; got {source!r}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise DataLoadError(f"max_images must be a positive int or None; got {max_images!r}")
    if source.startswith(_BUILTIN_PREFIX):
        data = _load_builtin(source[len(_BUILTIN_PREFIX) :], split, model_name, arch_kwargs)
    elif source.startswith(_FOLDER_PREFIX):
        return _load_folder(Path(source[len(_FOLDER_PREFIX) :]), model_name, arch_kwargs, max_images)
    else:
        data = _load_file(Path(source), model_name, arch_kwargs)
    if max_images is not None and max_images < len(data):
        data = ImageSet(
            images=data.images[:max_images].clone(),
            labels=None if data.labels is None else data.labels[:max_images].clone(),
        )
    return data


def _load_builtin(name: str, split: str, model_name: str | None, arch_kwargs: dict | None) -> ImageSet:
    if name not in _BUILTIN_DATASETS:
        choices = ", ".join(_BUILTIN_PREFIX + n for n in _BUILTIN_DATASETS)
        raise DataLoadError(f"unknown built-in dataset {_BUILTIN_PREFIX + name!r}; choose one of {choices}")
    if split not in DIGITS_SPLITS:
        raise DataLoadError(
            f"unknown split {split!r} for builtin:digits; choose one of {', '.join(DIGITS_SPLITS)}"
        )
    if model_name is None:
        return load_builtin_digits(split)  # type: ignore[arg-type]
    info = _model_info(model_name, arch_kwargs)
    channels, height, width = info["input_size"]
    if channels != 3 or height != width:
        raise DataLoadError(
            f"builtin:digits makes square 3-channel images but {model_name!r} expects input "
            f"{info['input_size']}"
        )
    return load_builtin_digits(split, img_size=height, mean=info["mean"], std=info["std"])  # type: ignore[arg-type]


def _model_info(model_name: str, arch_kwargs: dict | None) -> dict:
    from quant.models import model_info

    return model_info(model_name, arch_kwargs)


def _load_file(path: Path, model_name: str | None, arch_kwargs: dict | None) -> ImageSet:
    arrays = _read_safetensors(path, "image set")
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
    if model_name is not None:
        expected = tuple(_model_info(model_name, arch_kwargs)["input_size"][1:])
        got = (int(images.shape[2]), int(images.shape[3]))
        if got != expected:
            raise DataLoadError(
                f"images are {got[0]}x{got[1]} but {model_name!r} expects {expected[0]}x{expected[1]}; "
                "resize them (or set the model's img_size)"
            )
    return ImageSet(images=images.contiguous(), labels=labels)


def _load_folder(
    root: Path, model_name: str | None, arch_kwargs: dict | None, max_images: int | None
) -> ImageSet:
    if model_name is None:
        raise DataLoadError("folder: sources need model_name to choose the image size and normalisation")
    if not root.is_dir():
        raise DataLoadError(f"image folder not found: {str(root)!r}")
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    info = _model_info(model_name, arch_kwargs)
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


def save_imageset(path: str | Path, imageset: ImageSet) -> None:
    """Write ``imageset`` as a safetensors file readable by :func:`load_dataset`.

    The file holds ``images`` float32 ``[N, 3, H, W]`` and, when present, ``labels`` int64 ``[N]``.
    """
    from safetensors.torch import save_file

    if not isinstance(imageset, ImageSet):
        raise TypeError(f"imageset must be an ImageSet; got {type(imageset).__name__}")
    tensors = {"images": imageset.images.contiguous()}
    if imageset.labels is not None:
        tensors["labels"] = imageset.labels.contiguous()
    save_file(tensors, str(path), metadata={"format": "mpq-imageset", "version": "1"})


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


def describe_source(
    source: str, *, split: str = "calib", model_name: str | None = None, arch_kwargs: dict | None = None
) -> SourceInfo:
    """Cheap checks of a data source: the safetensors header (no tensor is read), a folder listing (no image is
    decoded) or the built-in split sizes. Raises :class:`DataLoadError` with what to fix; the same source may
    still fail in :func:`load_dataset` on what only the bytes show (NaN pixels, undecodable images).

    Messages name a file or folder by its last path component only.
    """
    if not isinstance(source, str) or not source:
        raise DataLoadError(f"data source must be a non-empty string; got {source!r}")
    if source.startswith(_BUILTIN_PREFIX):
        name = source[len(_BUILTIN_PREFIX) :]
        if name not in _BUILTIN_DATASETS:
            choices = ", ".join(_BUILTIN_PREFIX + n for n in _BUILTIN_DATASETS)
            raise DataLoadError(f"unknown built-in dataset {source!r}; choose one of {choices}")
        if split not in DIGITS_SPLITS:
            raise DataLoadError(f"unknown split {split!r} for builtin:digits; choose one of {DIGITS_SPLITS}")
        size = 32
        if model_name is not None:
            channels, height, width = _model_info(model_name, arch_kwargs)["input_size"]
            if channels != 3 or height != width:
                raise DataLoadError(
                    f"builtin:digits makes square 3-channel images but {model_name!r} expects input "
                    f"{(channels, height, width)}"
                )
            size = height
        return SourceInfo(count=_digits_split_size(split), image_shape=(3, size, size), labelled=True)
    if source.startswith(_FOLDER_PREFIX):
        return _describe_folder(Path(source[len(_FOLDER_PREFIX) :]))
    return _describe_file(Path(source))


def _digits_split_size(split: str) -> int:
    from safetensors import safe_open

    with safe_open(str(DIGITS_PATH), framework="pt") as handle:
        return int(handle.get_slice(f"{split}_idx").get_shape()[0])


def _describe_file(path: Path) -> SourceInfo:
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


def _describe_folder(root: Path) -> SourceInfo:
    if not root.is_dir():
        raise DataLoadError(f"image folder {root.name!r} not found")
    classes = sorted(entry for entry in root.iterdir() if entry.is_dir())
    count = 0
    for folder in classes:
        for _directory, _subdirs, files in _walk(folder):
            count += sum(1 for name in files if name.lower().endswith(IMAGE_EXTENSIONS))
    if not classes or count == 0:
        raise DataLoadError(
            f"image folder {root.name!r} has no images in class sub-folders; expected <folder>/<class>/<image>.jpg "
            f"with endings {', '.join(IMAGE_EXTENSIONS)}"
        )
    return SourceInfo(count=count, image_shape=None, labelled=True)


def _walk(folder: Path):
    import os

    return os.walk(folder, followlinks=True)
