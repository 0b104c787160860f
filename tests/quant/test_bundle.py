"""Bundle format 2: bit packing, bit-exact round trips (ViT and Swin, uniform and mixed precision), sizes, and
every validation error of save and load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from quant.bundle import (
    BUNDLE_FORMAT_VERSION,
    CONFIG_FILE,
    MODEL_FILE,
    REPORT_FILE,
    BundleError,
    bundle_sizes,
    load_quantized,
    save_bundle,
)
from quant.calibrate import calibrate_
from quant.packing import pack_codes, packed_nbytes, unpack_codes
from quant.ptq import quantize_ptq
from quant.wrap import quant_layers, set_bits_, set_uniform_bits_, wrap_model_

torch.set_num_threads(2)

# The built-in digits architectures (random weights: exactness does not depend on training).
VIT = ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3,
                                "num_classes": 10})
SWIN = ("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 48,
                                         "depths": (2, 2, 2), "num_heads": (3, 6, 12), "num_classes": 10})
TINY = ("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2,
                                 "num_classes": 3})


def _quantized(arch, softmax: str, minmax: bool, seed: int = 0, images: int = 8):
    name, kwargs = arch
    torch.manual_seed(seed)
    model = wrap_model_(timm.create_model(name, pretrained=False, **kwargs).eval(), softmax=softmax, minmax=minmax)
    set_uniform_bits_(model, 4, 4)
    calibrate_(model, [torch.randn(images, 3, kwargs["img_size"], kwargs["img_size"])])
    return model


def _mixed(model) -> dict[str, tuple[int, int]]:
    """Every weight width 2..8 and 16 and activation widths 2..8 and 16, cycling over the layers."""
    wcycle, acycle = (2, 3, 4, 5, 6, 8, 16), (3, 4, 2, 5, 16, 6, 8)
    return {name: (wcycle[i % len(wcycle)], acycle[i % len(acycle)])
            for i, name in enumerate(quant_layers(model))}


def _save(model, directory: Path, arch, softmax: str, minmax: bool, report: dict | None = None) -> Path:
    name, kwargs = arch
    return save_bundle(model, directory, model_spec={"name": name, "arch_kwargs": kwargs},
                       recipe={"softmax": softmax, "minmax": minmax}, report=report)


# ---- packing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 9), ids=lambda b: f"{b}bit")
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 13, 1000])
def test_pack_unpack_round_trip(bits, numel):
    codes = torch.randint(0, 2**bits, (numel,), generator=torch.Generator().manual_seed(bits * 1000 + numel))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(numel, bits)
    assert packed.numel() <= numel * bits / 8 + bits
    assert torch.equal(unpack_codes(packed, bits, numel).long(), codes)


def test_packing_layout_is_lsb_first():
    assert pack_codes(torch.tensor([1, 2, 3, 4, 5, 6, 7, 8]), 4).tolist() == [0x21, 0x43, 0x65, 0x87]
    assert pack_codes(torch.tensor([1, 2, 3, 0, 3, 3, 3, 3]), 2).tolist() == [0b00111001, 0b11111111]
    assert pack_codes(torch.tensor([7, 0, 0, 0, 0, 0, 0, 5]), 3).tolist() == [7, 0, 5 << 5]


@pytest.mark.parametrize("codes, bits, message", [
    (torch.tensor([0, 16]), 4, r"codes must lie in \[0, 15\] for 4 bits"),
    (torch.tensor([-1, 0]), 2, r"codes must lie in \[0, 3\]"),
    (torch.tensor([0.5]), 4, "codes must be integers"),
    (torch.tensor([1]), 9, "codes can be packed at 1..8 bits"),
])
def test_pack_rejects_bad_codes(codes, bits, message):
    with pytest.raises(ValueError, match=message):
        pack_codes(codes, bits)


def test_unpack_rejects_wrong_length():
    with pytest.raises(ValueError, match="packed codes must be a 1-D uint8 tensor of 4 bytes for 8 codes at 4 bits"):
        unpack_codes(torch.zeros(5, dtype=torch.uint8), 4, 8)


# ---- round trips -----------------------------------------------------------------------------------------
CASES = {
    # id: (arch, softmax, minmax, mixed)
    "vit-uniform-w4a4-minmax": (VIT, "uniform", True, False),
    "vit-mixed-tanq": (VIT, "tanq", True, True),
    "swin-uniform-w4a4-log2-mse": (SWIN, "log2", False, False),
    "swin-mixed-uniform": (SWIN, "uniform", True, True),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_round_trip_is_bit_exact(case, tmp_path):
    arch, softmax, minmax, mixed = CASES[case]
    model = _quantized(arch, softmax, minmax)
    if mixed:
        set_bits_(model, _mixed(model))
    layers = quant_layers(model)
    first = next(iter(layers.values()))
    first.input_quantizer.enabled = False  # a switched-off quantizer must stay off
    images = torch.randn(6, 3, arch[1]["img_size"], arch[1]["img_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
    _save(model, tmp_path, arch, softmax, minmax, report={"metrics": {"top1": 1.0}})

    loaded = load_quantized(tmp_path)
    with torch.no_grad():
        logits = loaded(images)
    assert torch.equal(logits, expected)
    assert {n: (q.wbits, q.abits) for n, q in quant_layers(loaded).items()} == \
        {n: (q.wbits, q.abits) for n, q in layers.items()}
    assert not next(iter(quant_layers(loaded).values())).input_quantizer.enabled
    assert json.loads((tmp_path / REPORT_FILE).read_text()) == {"metrics": {"top1": 1.0}}
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["format_version"] == BUNDLE_FORMAT_VERSION
    kwargs = json.loads(json.dumps(arch[1]))
    assert config["model"] == {"name": arch[0], "arch_kwargs": kwargs, "arch": arch[0], "timm_kwargs": kwargs}
    kinds = {a["kind"] for entry in config["layers"].values() for a in entry["activations"]}
    assert kinds == {"uniform", softmax}
    sizes = bundle_sizes(tmp_path)
    assert sizes["actual_bytes"] == (tmp_path / MODEL_FILE).stat().st_size
    assert 0 < sizes["overhead"] < 0.05


def test_round_trip_after_reparameterization(tmp_path):
    """RepQ folds the LayerNorm shifts into the next linear layers; Swin's reduction gains a bias it was built
    without, and the bundle still reloads exactly."""
    name, kwargs = "swin_tiny_patch4_window7_224", {"img_size": 16, "patch_size": 2, "window_size": 4,
                                                     "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4),
                                                     "num_classes": 10}
    torch.manual_seed(0)
    float_model = timm.create_model(name, pretrained=False, **kwargs).eval()
    assert float_model.layers[1].downsample.reduction.bias is None
    qmodel, _ = quantize_ptq(float_model, torch.randn(8, 3, 16, 16), method="repq", wbits=4, abits=4)
    assert qmodel.layers[1].downsample.reduction.bias is not None
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = qmodel(images)
    save_bundle(qmodel, tmp_path, model_spec={"name": name, "arch_kwargs": kwargs},
                recipe={"softmax": "log2", "minmax": False})
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path)(images), expected)


def test_weights_are_stored_packed(tmp_path):
    model = _quantized(VIT, "uniform", True)
    bits = _mixed(model)
    set_bits_(model, bits)
    _save(model, tmp_path, VIT, "uniform", True)
    tensors = safetensors.torch.load_file(str(tmp_path / MODEL_FILE))
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    for name, layer in quant_layers(model).items():
        if not layer.has_weight:
            assert f"{name}.weight" not in tensors and f"{name}.weight.codes" not in tensors
            continue
        wbits = bits[name][0]
        if wbits == 16:
            assert tensors[f"{name}.weight"].dtype == torch.float32
            assert config["layers"][name]["weights"]["stored"] == "float"
            continue
        codes = tensors[f"{name}.weight.codes"]
        assert f"{name}.weight" not in tensors
        assert codes.dtype == torch.uint8 and codes.numel() == packed_nbytes(layer.weight.numel(), wbits)
        expected = layer.weight_quantizer.integer_weight(layer.weight).to(torch.uint8).reshape(-1)
        assert torch.equal(unpack_codes(codes, wbits, layer.weight.numel()), expected)
        assert config["layers"][name]["weights"] == {
            "kind": "uniform_per_channel", "bits": wbits, "enabled": True, "stored": "packed", "packing": "lsb8",
            "shape": list(layer.weight.shape), "dtype": "float32"}
    assert tensors["activation_params"].dtype == torch.float32


@pytest.mark.parametrize("wbits", [4, 3])
def test_size_is_close_to_theoretical(tmp_path, wbits):
    model = _quantized(VIT, "uniform", True)
    set_uniform_bits_(model, wbits, wbits, head_bits=8)
    _save(model, tmp_path, VIT, "uniform", True)
    sizes = bundle_sizes(tmp_path)
    params = sum(q.weight.numel() * q.wbits for q in quant_layers(model).values() if q.has_weight) / 8
    assert sizes["packed_weight_bytes"] == pytest.approx(params)
    assert sizes["theoretical_bytes"] <= sizes["actual_bytes"] <= 1.05 * sizes["theoretical_bytes"]


# ---- validation ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    model = _quantized(TINY, "tanq", True, images=4)
    names = list(quant_layers(model))
    set_bits_(model, {names[1]: (3, 4), names[-1]: (16, 8)})
    return _save(model, tmp_path_factory.mktemp("tiny"), TINY, "tanq", True)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def _edit_config(directory: Path, edit) -> None:
    path = directory / CONFIG_FILE
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _edit_tensors(directory: Path, edit) -> None:
    path = directory / MODEL_FILE
    tensors = safetensors.torch.load_file(str(path))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path))


def _layer(config: dict, index: int) -> dict:
    return list(config["layers"].values())[index]


QKV, HEAD = "blocks.0.attn.qkv", "head"
LOAD_ERRORS = {
    "missing model file": (lambda d: (d / MODEL_FILE).unlink(), r"is missing model\.safetensors"),
    "missing config": (lambda d: (d / CONFIG_FILE).unlink(), r"is missing quant_config\.json"),
    "config not json": (lambda d: (d / CONFIG_FILE).write_text("{nope"), r"quant_config\.json is not valid JSON"),
    "config not an object": (lambda d: (d / CONFIG_FILE).write_text("[1]"), "must hold a JSON object"),
    "version 1": (lambda d: _edit_config(d, lambda c: c.update(format_version=1)),
                  r"unsupported bundle format_version 1 .* reads version 2: re-export"),
    "no version": (lambda d: _edit_config(d, lambda c: c.pop("format_version")),
                   "unsupported bundle format_version None"),
    "no layers section": (lambda d: _edit_config(d, lambda c: c.pop("layers")), "has no 'layers' section"),
    "unknown packing": (lambda d: _edit_config(d, lambda c: c.update(packing="msb")), "unknown packing 'msb'"),
    "unknown architecture": (lambda d: _edit_config(d, lambda c: c["model"].update(arch="vit_nope")),
                             "cannot rebuild model 'vit_tiny_patch16_224': unknown architecture 'vit_nope'"),
    "corrupt safetensors": (lambda d: (d / MODEL_FILE).write_bytes(b"\x00" * 20),
                            r"model\.safetensors cannot be read as safetensors"),
    "missing codes": (lambda d: _edit_tensors(d, lambda t: t.pop(f"{QKV}.weight.codes")),
                      r"model\.safetensors is missing tensor 'blocks\.0\.attn\.qkv\.weight\.codes'"),
    "missing float tensor": (lambda d: _edit_tensors(d, lambda t: t.pop("pos_embed")),
                             "is missing tensor 'pos_embed'"),
    "missing activation table": (lambda d: _edit_tensors(d, lambda t: t.pop("activation_params")),
                                 "is missing tensor 'activation_params'"),
    "codes too short": (lambda d: _edit_tensors(d, lambda t: t.update({f"{QKV}.weight.codes": t[
        f"{QKV}.weight.codes"][:-1].clone()})),
        r"tensor 'blocks\.0\.attn\.qkv\.weight\.codes' has shape \(287,\), expected \(288,\)"),
    "scale shape": (lambda d: _edit_tensors(d, lambda t: t.update({f"{QKV}.weight.scale": torch.ones(48)})),
                    r"weight\.scale' has shape \(48,\), expected \(48, 1\)"),
    "float tensor shape": (lambda d: _edit_tensors(d, lambda t: t.update(pos_embed=torch.zeros(1, 5, 8))),
                           r"tensor 'pos_embed' has shape \(1, 5, 8\), expected \(1, 5, 16\)"),
    "codes dtype": (lambda d: _edit_tensors(d, lambda t: t.update({f"{QKV}.weight.codes": t[
        f"{QKV}.weight.codes"].to(torch.int16)})), r"has dtype torch\.int16, expected torch\.uint8"),
    "activation table dtype": (lambda d: _edit_tensors(d, lambda t: t.update(activation_params=t[
        "activation_params"].double())), "'activation_params' must be 1-D float32"),
    "activation table short": (lambda d: _edit_tensors(d, lambda t: t.update(activation_params=t[
        "activation_params"][:3].clone())), "has 3 values, too few for layer"),
    "activation table long": (lambda d: _edit_tensors(d, lambda t: t.update(activation_params=torch.cat([
        t["activation_params"], torch.zeros(2)]))), r"has \d+ values, the layers use \d+"),
    "unexpected tensor": (lambda d: _edit_tensors(d, lambda t: t.update(extra=torch.zeros(2))),
                          r"has 1 tensors the rebuilt model does not use, e\.g\. \['extra'\]"),
    "unknown layer": (lambda d: _edit_config(d, lambda c: c["layers"].update({"blocks.9.mlp.fc1": {}})),
                      r"names layers \['blocks\.9\.mlp\.fc1'\] that the architecture does not have"),
    "missing layer": (lambda d: _edit_config(d, lambda c: c["layers"].pop(HEAD)),
                      "has no entry for quantization layer 'head'"),
    "weight shape": (lambda d: _edit_config(d, lambda c: c["layers"][QKV]["weights"].update(shape=[48, 8])),
                     (r"layer 'blocks\.0\.attn\.qkv' weight shape \[48, 8\] does not match the architecture's "
                      r"\[48, 16\]")),
    "weight bits": (lambda d: _edit_config(d, lambda c: c["layers"][QKV]["weights"].update(bits=12)),
                    "has packed weights with invalid bits 12"),
    "weights storage": (lambda d: _edit_config(d, lambda c: c["layers"][QKV]["weights"].update(stored="int8")),
                        "weights 'stored' must be 'packed' or 'float', got 'int8'"),
    "float weights for active quantizer": (
        lambda d: _edit_config(d, lambda c: c["layers"][HEAD]["weights"].update(bits=4)),
        "layer 'head' stores float weights for an active 4-bit weight quantizer"),
    "activation count": (lambda d: _edit_config(d, lambda c: c["layers"][QKV]["activations"].append({})),
                         "layer 'blocks.0.attn.qkv' needs 1 activation quantizer entries"),
    "activation kind": (lambda d: _edit_config(
        d, lambda c: c["layers"]["blocks.0.attn.matmul_av"]["activations"][0].update(kind="log2")),
        "activation quantizer kind 'log2' does not match the recipe's 'tanq'"),
    "activation offset": (lambda d: _edit_config(d, lambda c: c["layers"][QKV]["activations"][0].update(offset=7)),
                          "activation parameters start at 7, expected 2"),
}


@pytest.mark.parametrize("case", list(LOAD_ERRORS), ids=list(LOAD_ERRORS))
def test_load_errors(case, tiny_bundle, tmp_path):
    edit, message = LOAD_ERRORS[case]
    directory = _copy(tiny_bundle, tmp_path)
    edit(directory)
    with pytest.raises(BundleError, match=message):
        load_quantized(directory)


def test_load_without_resolved_arch_uses_the_name(tiny_bundle, tmp_path):
    directory = _copy(tiny_bundle, tmp_path)
    _edit_config(directory, lambda c: [c["model"].pop(k) for k in ("arch", "timm_kwargs")])
    assert isinstance(load_quantized(directory), torch.nn.Module)


def test_load_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_quantized(tmp_path / "nowhere")


def test_tiny_bundle_loads(tiny_bundle):
    assert isinstance(load_quantized(tiny_bundle), torch.nn.Module)


@pytest.fixture()
def tiny_model():
    return _quantized(TINY, "uniform", True, images=4)


def test_save_rejects_unknown_model(tiny_model, tmp_path):
    with pytest.raises(BundleError, match="cannot describe model 'vit_nope'"):
        save_bundle(tiny_model, tmp_path, model_spec={"name": "vit_nope"}, recipe={"softmax": "uniform",
                                                                                   "minmax": True})
    assert not (tmp_path / MODEL_FILE).exists()


def test_builtin_bundle_reloads_exactly_without_the_builtin_weights(tmp_path, monkeypatch):
    from quant import models
    from quant.data import load_dataset

    name = "builtin:vit-digits"
    calib = load_dataset("builtin:digits", split="calib", model_name=name).images[:32]
    test = load_dataset("builtin:digits", split="test", model_name=name).images[:100]
    qmodel, _ = quantize_ptq(models.build_model(name), calib, method="minmax", wbits=4, abits=4)
    with torch.no_grad():
        expected = qmodel(test)
    save_bundle(qmodel, tmp_path, model_spec={"name": name, "arch_kwargs": {}, "weights_path": None},
                recipe={"softmax": "uniform", "minmax": True})
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["model"]["arch"] == "vit_tiny_patch16_224" and config["model"]["timm_kwargs"]["depth"] == 6
    built = []
    original = models.build_model
    monkeypatch.setattr(models, "build_model", lambda n, *a, **k: built.append(n) or original(n, *a, **k))
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path)(test), expected)
    assert built == ["vit_tiny_patch16_224"]


def test_save_rejects_uncalibrated_weights(tiny_model, tmp_path):
    quant_layers(tiny_model)[QKV].weight_quantizer.calibrated = False
    with pytest.raises(BundleError, match="layer 'blocks.0.attn.qkv': weight quantizer is not calibrated"):
        _save(tiny_model, tmp_path, TINY, "uniform", True)


def test_save_rejects_unpackable_bits(tiny_model, tmp_path):
    quant_layers(tiny_model)[QKV].weight_quantizer.bits = 12
    with pytest.raises(BundleError, match="weight bits 12 cannot be packed"):
        _save(tiny_model, tmp_path, TINY, "uniform", True)


def test_save_rejects_fractional_zero_points(tiny_model, tmp_path):
    quant_layers(tiny_model)[QKV].weight_quantizer.zero_point += 0.5
    with pytest.raises(BundleError, match=r"weight zero points must be integers in \[0, 15\]"):
        _save(tiny_model, tmp_path, TINY, "uniform", True)


def test_save_rejects_per_tensor_scale(tiny_model, tmp_path):
    quantizer = quant_layers(tiny_model)[QKV].weight_quantizer
    quantizer.scale = torch.nn.Parameter(quantizer.scale[:1].clone(), requires_grad=False)
    with pytest.raises(BundleError, match=r"expected per-channel \(48, 1\)"):
        _save(tiny_model, tmp_path, TINY, "uniform", True)


def test_save_rejects_quantizer_not_reproducible_from_codes(tiny_model, tmp_path, monkeypatch):
    quantizer = quant_layers(tiny_model)[QKV].weight_quantizer
    monkeypatch.setattr(quantizer, "forward", lambda weight: weight)  # e.g. a learned-rounding quantizer
    with pytest.raises(BundleError, match="cannot be stored as integer codes"):
        _save(tiny_model, tmp_path, TINY, "uniform", True)
    assert not (tmp_path / MODEL_FILE).exists()
