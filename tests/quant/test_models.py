"""Tests for quant.models: the shipped built-in models, timm round trips and every ModelLoadError."""

from __future__ import annotations

import shutil

import pytest
import timm
import torch
from safetensors.torch import save_file

from quant import models
from quant.data import load_builtin_digits
from quant.models import BUILTIN_MODELS, ModelLoadError, build_model, builtin_spec, model_info

MIN_TOP1 = {"vit-digits": 97.0, "swin-digits": 95.0}
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 10}
TINY_SWIN = {
    "img_size": 32,
    "patch_size": 4,
    "window_size": 4,
    "embed_dim": 16,
    "depths": (1, 1),
    "num_heads": (1, 2),
    "num_classes": 10,
}


@pytest.fixture(scope="module")
def digits_test():
    return load_builtin_digits("test")


@pytest.fixture(scope="module")
def builtin():
    """Built-in models, each built once per module: ``builtin(name) -> nn.Module``."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build_model(f"builtin:{name}")
        return cache[name]

    return get


@pytest.fixture()
def tiny_vit_weights(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT).eval()
    path = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


def test_builtin_names():
    assert BUILTIN_MODELS == ("vit-digits", "swin-digits")


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_model_reaches_documented_accuracy(name, digits_test, builtin):
    model = builtin(name)
    assert not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(-1) for x, _ in digits_test.batches(250)])
    top1 = 100.0 * (pred == digits_test.labels).float().mean().item()
    assert top1 >= MIN_TOP1[name]
    assert top1 == pytest.approx(builtin_spec(name)["float_test_top1"], abs=0.01)


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_model_info(name):
    info = model_info(f"builtin:{name}")
    spec = builtin_spec(name)
    assert info["arch"] == spec["arch"] and info["arch_kwargs"] == spec["arch_kwargs"]
    assert info["input_size"] == (3, 32, 32)
    assert len(info["mean"]) == 3 and len(info["std"]) == 3
    assert info["float_test_top1"] >= MIN_TOP1[name]


def test_builtin_accepts_its_own_kwargs_as_tuples():
    kwargs = {"depths": (2, 2, 2), "window_size": 4}
    assert model_info("builtin:swin-digits", kwargs)["arch_kwargs"]["depths"] == [2, 2, 2]


def test_builtin_vit_uses_class_token_and_standard_blocks(builtin):
    model = builtin("vit-digits")
    assert model.cls_token is not None and model.global_pool == "token"
    names = {n for n, _ in model.named_modules()}
    assert {
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
        "blocks.0.norm1",
    } <= names


def test_builtin_swin_has_no_padding(builtin):
    model = builtin("swin-digits")
    for stage in model.layers:
        for block in stage.blocks:
            h, w = block.input_resolution
            assert h % block.window_size[0] == 0 and w % block.window_size[1] == 0


def test_timm_round_trip_vit(tiny_vit_weights):
    original, path = tiny_vit_weights
    loaded = build_model("vit_tiny_patch16_224", TINY_VIT, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)
    assert not loaded.training


def test_timm_round_trip_swin_and_half_precision(tmp_path):
    torch.manual_seed(0)
    original = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **TINY_SWIN).eval()
    path = tmp_path / "swin.safetensors"
    save_file({k: v.half() for k, v in original.state_dict().items()}, str(path))
    loaded = build_model("swin_tiny_patch4_window7_224", TINY_SWIN, str(path))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=1e-2, atol=1e-2)


def test_timm_without_weights_is_random_init():
    model = build_model("vit_tiny_patch16_224", TINY_VIT)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_timm_model_info_follows_img_size():
    info = model_info("vit_tiny_patch16_224", {"img_size": 64})
    assert info["input_size"] == (3, 64, 64)
    assert info["mean"] == (0.5, 0.5, 0.5)
    assert model_info("swin_tiny_patch4_window7_224")["input_size"] == (3, 224, 224)


def _weights_with(tmp_path, edit):
    torch.manual_seed(0)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT).state_dict()
    state = edit(dict(state))
    path = tmp_path / "edited.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _pickle_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(2)}, path)
    return path


def _drop(key):
    def edit(state):
        del state[key]
        return state

    return edit


def _add(key):
    def edit(state):
        state[key] = torch.zeros(1)
        return state

    return edit


def _prefix(state):
    return {f"module.{k}": v for k, v in state.items()}


def _int_weight(state):
    state["head.weight"] = state["head.weight"].to(torch.int32)
    return state


# (id, call(tmp_path) -> None, message fragments)
ERROR_CASES = [
    ("empty-name", lambda p: build_model(""), ["model name must be a non-empty string"]),
    ("unknown-arch", lambda p: build_model("xyz"), ["unknown architecture 'xyz'", "timm.list_models()"]),
    (
        "typo-arch-suggests",
        lambda p: build_model("vit_tiny_patc16_224"),
        ["did you mean vit_tiny_patch16_224"],
    ),
    (
        "unknown-builtin",
        lambda p: build_model("builtin:resnet-digits"),
        ["unknown built-in model 'builtin:resnet-digits'", "builtin:vit-digits"],
    ),
    (
        "pretrained-kwarg",
        lambda p: build_model("vit_tiny_patch16_224", {"pretrained": True}),
        ["may not contain ['pretrained']"],
    ),
    (
        "checkpoint-kwarg",
        lambda p: build_model("vit_tiny_patch16_224", {"checkpoint_path": "x.pth"}),
        ["may not contain ['checkpoint_path']"],
    ),
    (
        "kwargs-not-dict",
        lambda p: build_model("vit_tiny_patch16_224", [("depth", 1)]),
        ["arch_kwargs must be a dict"],
    ),
    (
        "bad-kwarg",
        lambda p: build_model("vit_tiny_patch16_224", {**TINY_VIT, "bogus": 1}),
        ["cannot build 'vit_tiny_patch16_224'", "bogus"],
    ),
    (
        "builtin-with-weights",
        lambda p: build_model("builtin:vit-digits", weights_path=p / "w.safetensors"),
        ["ships its own weights", "vit_tiny_patch16_224"],
    ),
    (
        "builtin-other-kwargs",
        lambda p: build_model("builtin:vit-digits", {"depth": 12}),
        ["fixed architecture", "'depth': 12"],
    ),
    (
        "builtin-info-other-kwargs",
        lambda p: model_info("builtin:swin-digits", {"embed_dim": 96}),
        ["fixed architecture"],
    ),
    ("info-unknown-arch", lambda p: model_info("nope_net"), ["unknown architecture 'nope_net'"]),
    (
        "weights-not-found",
        lambda p: build_model("vit_tiny_patch16_224", TINY_VIT, p / "missing.safetensors"),
        ["weights file not found"],
    ),
    (
        "weights-pickle",
        lambda p: build_model("vit_tiny_patch16_224", TINY_VIT, _pickle_file(p)),
        ["is not a safetensors file", "pickled checkpoints", "save_file"],
    ),
    (
        "weights-missing-key",
        lambda p: build_model("vit_tiny_patch16_224", TINY_VIT, _weights_with(p, _drop("head.bias"))),
        ["1 missing keys: head.bias"],
    ),
    (
        "weights-unexpected-key",
        lambda p: build_model("vit_tiny_patch16_224", TINY_VIT, _weights_with(p, _add("extra"))),
        ["1 unexpected keys: extra"],
    ),
    (
        "weights-module-prefix",
        lambda p: build_model("vit_tiny_patch16_224", TINY_VIT, _weights_with(p, _prefix)),
        ["missing keys", "unexpected keys: module.", "strip the 'module.' prefix"],
    ),
    (
        "weights-shape-mismatch",
        lambda p: build_model(
            "vit_tiny_patch16_224", {**TINY_VIT, "num_classes": 5}, _weights_with(p, lambda s: s)
        ),
        ["2 shape mismatches", "head.weight: file (10, 32) vs model (5, 32)"],
    ),
    (
        "weights-int-tensor",
        lambda p: build_model("vit_tiny_patch16_224", TINY_VIT, _weights_with(p, _int_weight)),
        ["non-float tensors for float parameters: head.weight"],
    ),
]


@pytest.mark.parametrize(("call", "fragments"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_model_load_errors(tmp_path, call, fragments):
    with pytest.raises(ModelLoadError) as info:
        call(tmp_path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_corrupt_builtin_weights_are_detected(tmp_path, monkeypatch):
    for item in models._ASSETS.iterdir():
        shutil.copy(item, tmp_path / item.name)
    spec = builtin_spec("vit-digits")
    with open(tmp_path / spec["weights"], "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x00\x80\x7f")
    monkeypatch.setattr(models, "_ASSETS", tmp_path)
    with pytest.raises(ModelLoadError, match="do not match the sha256 in models.json"):
        build_model("builtin:vit-digits")


def test_model_load_error_is_value_error():
    assert issubclass(ModelLoadError, ValueError)
