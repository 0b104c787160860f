"""Image sets for calibration and evaluation: which sources exist and how each is loaded for a model.

Every source ends up as an :class:`~quant.imageset.ImageSet`: float32 images ``[N, 3, H, W]`` already resized
and normalised for the model, plus optional int64 labels ``[N]``. Sources (the ``source`` string of
:func:`load_dataset`):

- ``builtin:digits``: the shipped 8x8 handwritten digits with fixed ``train`` / ``calib`` / ``test`` splits,
  upsampled and normalised for the model (:mod:`quant.digits`).
- a path to a ``.safetensors`` file holding ``images`` (float [N, 3, H, W], already preprocessed) and
  optionally ``labels`` (integer [N]); see :func:`save_imageset` and :mod:`quant.imageset`.
- ``folder:PATH``: an ImageNet-style folder (``PATH/<class>/<image>.jpg``) decoded with timm's evaluation
  transform for the model (:mod:`quant.image_folder`). Restricting which folders a caller may read
  (``MPQ_DATA_ROOT``) is the service's job, not this module's.

Failures raise :class:`DataLoadError` (a ``ValueError``) whose message says what to fix. The names of
:mod:`quant.imageset`, :mod:`quant.digits` and :mod:`quant.image_folder` that callers use are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from quant.digits import (
    DIGITS_MEAN,
    DIGITS_PATH,
    DIGITS_SPLITS,
    DIGITS_STD,
    digits_split_size,
    load_builtin_digits,
)
from quant.image_folder import IMAGE_EXTENSIONS, describe_image_folder, load_image_folder
from quant.imageset import (
    DataLoadError,
    ImageSet,
    SourceInfo,
    describe_imageset_file,
    read_imageset_file,
    save_imageset,
)

__all__ = [
    "DIGITS_MEAN",
    "DIGITS_PATH",
    "DIGITS_SPLITS",
    "DIGITS_STD",
    "IMAGE_EXTENSIONS",
    "DataLoadError",
    "ImageSet",
    "SourceInfo",
    "describe_source",
    "load_builtin_digits",
    "load_dataset",
    "save_imageset",
]

_BUILTIN_PREFIX = "builtin:"
_FOLDER_PREFIX = "folder:"
_BUILTIN_DATASETS = ("digits",)


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
        if model_name is None:
            raise DataLoadError("folder: sources need model_name to choose the image size and normalisation")
        root = Path(source[len(_FOLDER_PREFIX) :])
        if not root.is_dir():  # before the model is resolved, as the message is about the folder
            raise DataLoadError(f"image folder not found: {str(root)!r}")
        return load_image_folder(root, _model_info(model_name, arch_kwargs), max_images)
    else:
        data = _load_file(Path(source), model_name, arch_kwargs)
    if max_images is not None and max_images < len(data):
        data = ImageSet(
            images=data.images[:max_images].clone(),
            labels=None if data.labels is None else data.labels[:max_images].clone(),
        )
    return data


def _load_builtin(name: str, split: str, model_name: str | None, arch_kwargs: dict | None) -> ImageSet:
    _check_builtin(_BUILTIN_PREFIX + name, split)
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


def _check_builtin(source: str, split: str) -> None:
    if source[len(_BUILTIN_PREFIX) :] not in _BUILTIN_DATASETS:
        choices = ", ".join(_BUILTIN_PREFIX + n for n in _BUILTIN_DATASETS)
        raise DataLoadError(f"unknown built-in dataset {source!r}; choose one of {choices}")
    if split not in DIGITS_SPLITS:
        raise DataLoadError(
            f"unknown split {split!r} for builtin:digits; choose one of {', '.join(DIGITS_SPLITS)}"
        )


def _model_info(model_name: str, arch_kwargs: dict | None) -> dict:
    from quant.models import model_info

    return model_info(model_name, arch_kwargs)


def _load_file(path: Path, model_name: str | None, arch_kwargs: dict | None) -> ImageSet:
    data = read_imageset_file(path)
    if model_name is not None:
        expected = tuple(_model_info(model_name, arch_kwargs)["input_size"][1:])
        if data.image_size != expected:
            got = data.image_size
            raise DataLoadError(
                f"images are {got[0]}x{got[1]} but {model_name!r} expects {expected[0]}x{expected[1]}; "
                "resize them (or set the model's img_size)"
            )
    return data


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
        _check_builtin(source, split)
        size = 32
        if model_name is not None:
            channels, height, width = _model_info(model_name, arch_kwargs)["input_size"]
            if channels != 3 or height != width:
                raise DataLoadError(
                    f"builtin:digits makes square 3-channel images but {model_name!r} expects input "
                    f"{(channels, height, width)}"
                )
            size = height
        return SourceInfo(count=digits_split_size(split), image_shape=(3, size, size), labelled=True)
    if source.startswith(_FOLDER_PREFIX):
        return describe_image_folder(Path(source[len(_FOLDER_PREFIX) :]))
    return describe_imageset_file(Path(source))
