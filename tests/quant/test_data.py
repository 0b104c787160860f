"""Tests for quant.data: built-in digits splits, safetensors image sets, image folders and DataLoadError."""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from quant.data import (
    DIGITS_MEAN,
    DIGITS_PATH,
    DataLoadError,
    ImageSet,
    load_builtin_digits,
    load_dataset,
    save_imageset,
)

SPLIT_SIZES = {"train": 1297, "calib": 256, "test": 500}


@pytest.fixture(scope="module")
def digits():
    return load_file(str(DIGITS_PATH))


def test_digits_asset_format(digits):
    assert digits["images"].dtype == torch.uint8 and digits["images"].shape == (1797, 8, 8)
    assert int(digits["images"].max()) == 16
    assert digits["labels"].dtype == torch.int64 and digits["labels"].shape == (1797,)
    assert sorted(digits["labels"].unique().tolist()) == list(range(10))


def test_splits_have_fixed_sizes_and_do_not_overlap(digits):
    train, calib, test = (set(digits[f"{s}_idx"].tolist()) for s in ("train", "calib", "test"))
    assert (len(train), len(calib), len(test)) == (1297, 256, 500)
    assert not train & test
    assert calib <= train
    assert train | test == set(range(1797))


def test_splits_are_the_shipped_ones(digits):
    """Pins the seeded split: a regenerated asset with other indices would silently change every benchmark."""
    blob = b"".join(digits[f"{s}_idx"].numpy().tobytes() for s in ("train", "calib", "test"))
    assert digits["test_idx"][:5].tolist() == [2, 12, 13, 20, 28]
    assert (
        hashlib.sha256(blob).hexdigest() == "409d05a7550d7dc1781e59f35a674a6df40dc0abf18d113c9946f8dddc4ee1c7"
    )


@pytest.mark.parametrize("split", ["train", "calib", "test"])
def test_load_builtin_digits(split):
    data = load_builtin_digits(split)
    assert len(data) == SPLIT_SIZES[split]
    assert data.images.shape == (SPLIT_SIZES[split], 3, 32, 32) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert torch.equal(data.images[:, 0], data.images[:, 2])


def test_builtin_digits_normalisation():
    train = load_builtin_digits("train")
    assert abs(train.images.mean().item()) < 0.01 and abs(train.images.std().item() - 1) < 0.01
    raw = load_builtin_digits("test", img_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    assert raw.image_size == (16, 16)
    assert raw.images.min() >= 0 and raw.images.max() <= 1
    normalised = load_builtin_digits("test", img_size=16)
    torch.testing.assert_close(normalised.images, (raw.images - DIGITS_MEAN[0]) / 0.324)


def test_load_dataset_builtin_matches_model_preprocessing():
    direct = load_builtin_digits("calib")
    for model_name in (None, "builtin:vit-digits", "builtin:swin-digits"):
        via = load_dataset("builtin:digits", model_name=model_name)
        assert torch.equal(via.images, direct.images) and torch.equal(via.labels, direct.labels)


def test_load_dataset_builtin_for_timm_model():
    data = load_dataset(
        "builtin:digits", split="test", model_name="vit_tiny_patch16_224", arch_kwargs={"img_size": 48}
    )
    assert data.images.shape == (500, 3, 48, 48)


@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "no-labels"])
def test_save_and_load_imageset(tmp_path, with_labels):
    images = torch.randn(7, 3, 16, 16)
    labels = torch.arange(7) if with_labels else None
    path = tmp_path / "set.safetensors"
    save_imageset(path, ImageSet(images, labels))
    loaded = load_dataset(str(path))
    assert torch.equal(loaded.images, images)
    assert (loaded.labels is None) == (not with_labels)
    if with_labels:
        assert torch.equal(loaded.labels, labels)
    assert len(load_dataset(str(path), max_images=3)) == 3


def test_load_file_converts_dtypes(tmp_path):
    path = tmp_path / "half.safetensors"
    save_file(
        {
            "images": torch.zeros(2, 3, 8, 8, dtype=torch.float16),
            "labels": torch.tensor([1, 2], dtype=torch.int32),
        },
        str(path),
    )
    data = load_dataset(str(path))
    assert data.images.dtype == torch.float32 and data.labels.dtype == torch.int64


def test_batches():
    data = ImageSet(torch.zeros(5, 3, 4, 4), torch.arange(5))
    sizes = [(x.shape[0], y.tolist()) for x, y in data.batches(2)]
    assert sizes == [(2, [0, 1]), (2, [2, 3]), (1, [4])]
    assert [y for _, y in ImageSet(torch.zeros(3, 3, 4, 4)).batches(2)] == [None, None]


def _make_folder(root, size=(20, 12)):
    for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", size, color).save(root / c / f"{i}.png")
    return root


def test_folder_dataset(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    data = load_dataset(f"folder:{root}", model_name="builtin:vit-digits")
    assert data.images.shape == (6, 3, 32, 32)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    timm_data = load_dataset(
        f"folder:{root}", model_name="vit_tiny_patch16_224", arch_kwargs={"img_size": 24}
    )
    assert timm_data.images.shape == (6, 3, 24, 24)
    # red cat images normalised with mean/std 0.5: red channel (1 - 0.5) / 0.5 = 1, blue (0 - 0.5) / 0.5 = -1
    torch.testing.assert_close(timm_data.images[0, 0], torch.ones(24, 24))
    torch.testing.assert_close(timm_data.images[0, 2], -torch.ones(24, 24))
    capped = load_dataset(f"folder:{root}", model_name="builtin:vit-digits", max_images=4)
    assert len(capped) == 4


def _save(tmp_path, **tensors):
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


def _nan_images(tmp_path):
    images = torch.zeros(4, 3, 8, 8)
    images[1, 0, 0, 0] = float("nan")
    return _save(tmp_path, images=images)


def _not_safetensors(tmp_path):
    path = tmp_path / "images.pt"
    torch.save({"images": torch.zeros(1)}, path)
    return str(path)


def _good(tmp_path):
    return _save(tmp_path, images=torch.zeros(2, 3, 16, 16))


OK = torch.zeros(2, 3, 8, 8)

# (id, call(tmp_path) -> None, message fragments)
ERROR_CASES = [
    ("empty-source", lambda p: load_dataset(""), ["non-empty string"]),
    (
        "unknown-builtin",
        lambda p: load_dataset("builtin:cifar"),
        ["unknown built-in dataset 'builtin:cifar'", "builtin:digits"],
    ),
    (
        "unknown-split",
        lambda p: load_dataset("builtin:digits", split="val"),
        ["unknown split 'val'", "train, calib, test"],
    ),
    ("digits-bad-split", lambda p: load_builtin_digits("val"), ["unknown digits split 'val'"]),
    ("digits-bad-mean", lambda p: load_builtin_digits("test", mean=(0.5,)), ["mean must be 3 numbers"]),
    ("digits-zero-std", lambda p: load_builtin_digits("test", std=(1, 0, 1)), ["std must be positive"]),
    (
        "bad-max-images",
        lambda p: load_dataset("builtin:digits", max_images=0),
        ["max_images must be a positive int"],
    ),
    ("file-not-found", lambda p: load_dataset(str(p / "nope.safetensors")), ["image set file not found"]),
    (
        "not-safetensors",
        lambda p: load_dataset(_not_safetensors(p)),
        ["not a readable safetensors file", "save_imageset"],
    ),
    (
        "no-images",
        lambda p: load_dataset(_save(p, labels=torch.zeros(2, dtype=torch.int64))),
        ["has no 'images' tensor"],
    ),
    (
        "extra-tensor",
        lambda p: load_dataset(_save(p, images=OK, label=torch.zeros(2, dtype=torch.int64))),
        ["unexpected tensors ['label']"],
    ),
    (
        "int-images",
        lambda p: load_dataset(_save(p, images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8))),
        ["'images' must be floating point", "got torch.uint8", "mean/std"],
    ),
    (
        "images-3d",
        lambda p: load_dataset(_save(p, images=torch.zeros(3, 8, 8))),
        ["[N, 3, H, W]", "got (3, 8, 8)"],
    ),
    (
        "images-channels-last",
        lambda p: load_dataset(_save(p, images=torch.zeros(2, 8, 8, 3))),
        ["got (2, 8, 8, 3)"],
    ),
    ("images-empty", lambda p: load_dataset(_save(p, images=torch.zeros(0, 3, 8, 8))), ["N >= 1"]),
    ("images-nan", lambda p: load_dataset(_nan_images(p)), ["NaN or infinite values in 1 of 4 images"]),
    (
        "float-labels",
        lambda p: load_dataset(_save(p, images=OK, labels=torch.zeros(2))),
        ["'labels' must be an integer tensor", "torch.float32"],
    ),
    (
        "labels-length",
        lambda p: load_dataset(_save(p, images=OK, labels=torch.zeros(3, dtype=torch.int64))),
        ["'labels' must have shape [N] with N = 2", "got (3,)"],
    ),
    (
        "labels-negative",
        lambda p: load_dataset(_save(p, images=OK, labels=torch.tensor([0, -1]))),
        ["found negative values"],
    ),
    (
        "size-vs-model",
        lambda p: load_dataset(_good(p), model_name="builtin:vit-digits"),
        ["images are 16x16 but 'builtin:vit-digits' expects 32x32"],
    ),
    ("folder-no-model", lambda p: load_dataset(f"folder:{p}"), ["need model_name"]),
    (
        "folder-not-found",
        lambda p: load_dataset(f"folder:{p / 'nope'}", model_name="builtin:vit-digits"),
        ["image folder not found"],
    ),
    (
        "folder-empty",
        lambda p: load_dataset(f"folder:{p}", model_name="builtin:vit-digits"),
        ["is not an image folder", "<class>/<image>.jpg"],
    ),
    (
        "imageset-int-images",
        lambda p: ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.int64)),
        ["ImageSet.images must be a float32 tensor"],
    ),
    (
        "imageset-1-channel",
        lambda p: ImageSet(torch.zeros(2, 1, 4, 4)),
        ["3 channels", "got shape (2, 1, 4, 4)"],
    ),
    (
        "imageset-labels-dtype",
        lambda p: ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2)),
        ["ImageSet.labels must be an int64 tensor"],
    ),
    (
        "imageset-labels-count",
        lambda p: ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(3, dtype=torch.int64)),
        ["has 3 entries but there are 2 images"],
    ),
]


@pytest.mark.parametrize(("call", "fragments"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_data_load_errors(tmp_path, call, fragments):
    with pytest.raises(DataLoadError) as info:
        call(tmp_path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_data_load_error_is_value_error():
    assert issubclass(DataLoadError, ValueError)


# ---- describe_source: the cheap checks run at submit (no image decoded, no tensor read) -------------------------
def test_describe_builtin_digits_sizes():
    from quant.data import describe_source

    for split, size in SPLIT_SIZES.items():
        info = describe_source("builtin:digits", split=split, model_name="builtin:vit-digits")
        assert (info.count, info.image_shape, info.labelled) == (size, (3, 32, 32), True)
    timm_info = describe_source("builtin:digits", model_name="vit_tiny_patch16_224", arch_kwargs={"img_size": 48})
    assert timm_info.image_shape == (3, 48, 48)


def test_describe_file_reads_only_the_header(tmp_path, monkeypatch):
    import safetensors.torch

    from quant.data import describe_source

    path = tmp_path / "set.safetensors"
    save_imageset(path, ImageSet(torch.zeros(7, 3, 12, 10), torch.zeros(7, dtype=torch.int64)))

    def no_load(*_args, **_kwargs):
        raise AssertionError("describe_source must not load tensors")

    monkeypatch.setattr(safetensors.torch, "load_file", no_load)
    info = describe_source(str(path))
    assert (info.count, info.image_shape, info.labelled) == (7, (3, 12, 10), True)


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        ({"images": torch.zeros(2, 3, 4, 4), "extra": torch.zeros(1)}, "unexpected tensors ['extra']"),
        ({"labels": torch.zeros(2, dtype=torch.int64)}, "no 'images' tensor"),
        ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.int32)}, "must be floating point"),
        ({"images": torch.zeros(2, 1, 4, 4)}, "[N, 3, H, W]"),
        ({"images": torch.zeros(2, 3, 4, 4), "labels": torch.zeros(3, dtype=torch.int64)}, "with N = 2"),
    ],
    ids=["extra", "no-images", "int-images", "one-channel", "label-count"],
)
def test_describe_file_errors_name_no_directory(tmp_path, tensors, fragment):
    from quant.data import describe_source

    path = _save(tmp_path, **tensors)
    with pytest.raises(DataLoadError) as info:
        describe_source(path)
    assert fragment in str(info.value)
    assert str(tmp_path) not in str(info.value)


def test_describe_folder_lists_without_decoding(tmp_path, monkeypatch):
    import PIL.Image

    from quant.data import describe_source

    root = _make_folder(tmp_path / "imgs")
    (root / "cat" / "notes.txt").write_text("not an image")
    monkeypatch.setattr(PIL.Image, "open", lambda *_a, **_k: (_ for _ in ()).throw(AssertionError("decoded")))
    info = describe_source(f"folder:{root}")
    assert (info.count, info.image_shape, info.labelled) == (6, None, True)
    with pytest.raises(DataLoadError, match="no images in class sub-folders"):
        describe_source(f"folder:{tmp_path / 'imgs' / 'cat'}")
    with pytest.raises(DataLoadError, match="'missing' not found"):
        describe_source(f"folder:{tmp_path / 'missing'}")


def test_folder_load_decodes_only_max_images(tmp_path, monkeypatch):
    from torchvision.datasets import ImageFolder

    root = _make_folder(tmp_path / "imgs")
    decoded = []
    original = ImageFolder.__getitem__

    def counting(self, index):
        decoded.append(index)
        return original(self, index)

    monkeypatch.setattr(ImageFolder, "__getitem__", counting)
    data = load_dataset(f"folder:{root}", model_name="builtin:vit-digits", max_images=2)
    assert len(data) == 2 and len(decoded) == 2
