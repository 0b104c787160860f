"""Bundle format 3: bit packing, the quantization map, bit-exact round trips of params and logits (ViT and Swin,
uniform and mixed precision, nearest and learned rounding), sizes, and every validation error of save and load."""

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
from quant.calibration import SearchSettings, calibrate_table
from quant.packing import pack_codes, packed_nbytes, unpack_codes
from quant.ptq import PTQ_METHODS, calibration_plan, quantize_ptq, reparameterize_for_, wrapped_copy
from quant.quantizers import (
    AffineParams,
    DynamicParams,
    LayerParams,
    Log2Params,
    TanQParams,
    WeightParams,
    params_equal,
    weight_codes,
)
from quant.quantizers.training import QDropInput, soft_rounded
from quant.reconstruct import reconstruct_
from quant.wrap import load_params_, quant_layers, quantization_map, uniform_pairs

torch.set_num_threads(2)

# The built-in digits architectures (random weights: exactness does not depend on training).
VIT = ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3,
                                "num_classes": 10})
SWIN = ("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 48,
                                         "depths": (2, 2, 2), "num_heads": (3, 6, 12), "num_classes": 10})
TINY = ("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2,
                                 "num_classes": 3})
SETTINGS = SearchSettings(images=8, act_tokens=512, matmul_images=4)


def _float_model(arch, seed: int = 0) -> torch.nn.Module:
    name, kwargs = arch
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _images(arch, n: int, seed: int) -> torch.Tensor:
    size = arch[1]["img_size"]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _quantized(arch, method: str, *, pairs=None, range_search: str = "minmax", images: int = 8):
    """A wrapped copy of a random ``arch`` model running with the table entries of ``pairs(model)`` (default:
    uniform W4A4, head 8/8), calibrated by ``method``'s recipe."""
    model = wrapped_copy(_float_model(arch))
    calib = _images(arch, images, 0)
    assignment = (pairs or (lambda m: uniform_pairs(quant_layers(m), 4, 4)))(model)
    reparameterize_for_(model, calib, method=method, reference=assignment)
    plan = calibration_plan(model, method=method, pairs={n: (p,) for n, p in assignment.items()},
                            reference=assignment, range_search=range_search)
    table = calibrate_table(model, calib, plan, settings=SETTINGS)
    load_params_(model, table.select(assignment))
    return model


def _mixed(model) -> dict[str, tuple[int, int]]:
    """Every weight width 2..8 and 16 and activation widths 2..8 and 16, cycling over the layers (layers without
    weights: wbits 16)."""
    wcycle, acycle = (2, 3, 4, 5, 6, 8, 16), (3, 4, 2, 5, 16, 6, 8)
    return {name: (wcycle[i % len(wcycle)] if layer.has_weight else 16, acycle[i % len(acycle)])
            for i, (name, layer) in enumerate(quant_layers(model).items())}


def _recipe(method: str) -> dict:
    return {"softmax": PTQ_METHODS[method].softmax, "minmax": PTQ_METHODS[method].minmax}


def _save(model, directory: Path, arch, method: str, report: dict | None = None) -> Path:
    name, kwargs = arch
    return save_bundle(model, directory, model_spec={"name": name, "arch_kwargs": kwargs}, recipe=_recipe(method),
                       report=report)


def _stored(layer) -> LayerParams:
    """What a bundle stores for ``layer``: its params with the weight's integer codes made explicit (nearest
    rounding unless the params already carry learned codes)."""
    params = layer.params
    weight = params.weight
    if weight is None or weight.codes is not None:
        return params
    codes = weight_codes(layer.weight.detach(), weight).to(torch.uint8)
    return LayerParams(WeightParams(weight.scale, weight.zero_point, weight.bits, weight.layout, weight.block_size,
                                    codes), params.inputs)


def _assert_reloads_exactly(model, directory: Path, images: torch.Tensor) -> torch.nn.Module:
    """The bundle in ``directory`` reloads ``model``: bit-identical logits and, layer by layer, params equal to
    what ``model`` runs with (the weight codes explicit)."""
    loaded = load_quantized(directory)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    again = quant_layers(loaded)
    assert list(again) == list(quant_layers(model))
    for name, layer in quant_layers(model).items():
        assert params_equal(again[name].params, _stored(layer)), name
        # and the weight's grid itself is unchanged (codes aside)
        w0, w1 = layer.params.weight, again[name].params.weight
        assert (w0 is None) == (w1 is None) and (w0 is None or params_equal(w0.without_codes(), w1.without_codes()))
    return loaded


def _input_meta(params) -> dict:
    """The map entry of one input's params, derived from the record's fields."""
    if isinstance(params, AffineParams):
        return {"kind": "uniform", "bits": params.bits, "granularity": params.granularity}
    if isinstance(params, DynamicParams):
        return {"kind": "dynamic", "bits": params.bits, "granularity": params.granularity,
                "block_size": params.block_size}
    if isinstance(params, TanQParams):
        return {"kind": "tanq", "bits": params.bits}
    assert isinstance(params, Log2Params)
    return {"kind": "log2", "bits": params.bits}


def _assert_map_describes(config: dict, model) -> None:
    """``quant_config.json``'s ``layers`` describe every layer of ``model`` exactly: component, bits, weight kind,
    layout, block size, shape, dtype, and each input's kind, bits and granularity."""
    layers = quant_layers(model)
    own_map = quantization_map(model)
    assert list(config["layers"]) == list(layers)
    for name, layer in layers.items():
        entry, params = config["layers"][name], layer.params
        assert (entry["component"], entry["wbits"], entry["abits"]) == (layer.component, layer.wbits, layer.abits)
        if params.weight is None:
            assert entry["weight"] is None, name
        else:
            w = params.weight
            assert entry["weight"] == {"kind": "uniform_weight", "bits": w.bits, "layout": w.layout,
                                       "block_size": w.block_size, "shape": list(layer.weight.shape),
                                       "dtype": "float32"}, name
        assert entry["inputs"] == [None if p is None else _input_meta(p) for p in params.inputs], name
        # the stored map is the model's own quantization map plus the stored weight's shape and dtype
        own = own_map[name]
        if own["weight"] is not None:
            assert own["weight"].pop("codes") == (params.weight.codes is not None)
            own["weight"].update(shape=list(layer.weight.shape), dtype="float32")
        assert entry == own, name


def _assert_sizes(directory: Path) -> dict:
    """The file holds the information at its exact width: apart from the safetensors header, at most the padding
    of each packed code stream to whole groups of 8 codes. The header (name, dtype, shape and offsets of each
    tensor) is the rest: under 128 bytes per tensor (measured 92 to 100; 2.7 to 6.4 % of these tiny models'
    payload, far less for real-size models)."""
    sizes = bundle_sizes(directory)
    assert sizes["actual_bytes"] == (directory / MODEL_FILE).stat().st_size
    payload = sizes["actual_bytes"] - sizes["header_bytes"]
    assert sizes["theoretical_bytes"] <= payload <= 1.001 * sizes["theoretical_bytes"]
    n_tensors = len(safetensors.torch.load_file(str(directory / MODEL_FILE)))
    assert 0 < sizes["header_bytes"] < 128 * n_tensors
    assert sizes["overhead"] == pytest.approx(sizes["actual_bytes"] / sizes["theoretical_bytes"] - 1)
    return sizes


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
    # id: (arch, method, range_search, mixed)
    "vit-uniform-w4a4-minmax": (VIT, "minmax", "minmax", False),
    "vit-mixed-tanq": (VIT, "dopq", "minmax", True),
    "swin-uniform-w4a4-log2-output": (SWIN, "repq", "output", False),  # per-position and per-head scales
    "swin-mixed-uniform": (SWIN, "minmax", "minmax", True),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_round_trip_is_bit_exact(case, tmp_path):
    arch, method, range_search, mixed = CASES[case]
    model = _quantized(arch, method, pairs=_mixed if mixed else None, range_search=range_search)
    layers = quant_layers(model)
    first_name, first = next(iter(layers.items()))
    first.load_params(LayerParams(first.params.weight, (None,)))  # a float input next to a quantized weight
    images = _images(arch, 6, 1)
    _save(model, tmp_path, arch, method, report={"metrics": {"top1": 1.0}})

    loaded = _assert_reloads_exactly(model, tmp_path, images)
    assert quant_layers(loaded)[first_name].params.inputs == (None,)
    assert {n: (q.wbits, q.abits) for n, q in quant_layers(loaded).items()} == \
        {n: (q.wbits, q.abits) for n, q in layers.items()}
    assert json.loads((tmp_path / REPORT_FILE).read_text()) == {"metrics": {"top1": 1.0}}
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["format_version"] == BUNDLE_FORMAT_VERSION == 3
    kwargs = json.loads(json.dumps(arch[1]))
    assert config["model"] == {"name": arch[0], "arch_kwargs": kwargs, "arch": arch[0], "timm_kwargs": kwargs}
    assert config["recipe"] == _recipe(method)
    _assert_map_describes(config, model)
    kinds = {a["kind"] for entry in config["layers"].values() for a in entry["inputs"] if a is not None}
    assert kinds == {"uniform", PTQ_METHODS[method].softmax}
    granularities = {a.get("granularity") for entry in config["layers"].values() for a in entry["inputs"]
                     if a is not None and a["kind"] == "uniform"}
    assert granularities == ({"tensor", "position", "head"} if range_search == "output" else {"tensor"})
    _assert_sizes(tmp_path)


def test_learned_codes_round_trip(tmp_path):
    """A reconstructed model runs with learned weight codes (not nearest rounding) and learned input scales: the
    bundle stores those codes and reloads the same params and bit-identical logits."""
    float_model = _float_model(TINY)
    with torch.no_grad():
        float_model.head.weight.mul_(50.0)  # a sharper head, so the reconstruction has something to learn
    calib = _images(TINY, 32, 0)
    qmodel, _ = quantize_ptq(float_model, calib, method="dopq", wbits=3, abits=3, range_search="minmax")
    report = reconstruct_(qmodel, float_model, calib, loss="mse", iters=40, batch_size=16, round_lr=1e-2)
    assert any(b.kept == "reconstructed" for b in report.blocks)
    learned = [name for name, layer in quant_layers(qmodel).items()
               if layer.params.weight is not None and layer.params.weight.codes is not None
               and not torch.equal(layer.params.weight.codes.float(),
                                   weight_codes(layer.weight, layer.params.weight.without_codes()))]
    assert learned, "no layer learned a rounding that differs from nearest rounding"
    _save(qmodel, tmp_path, TINY, "dopq")
    _assert_map_describes(json.loads((tmp_path / CONFIG_FILE).read_text()), qmodel)
    loaded = _assert_reloads_exactly(qmodel, tmp_path, _images(TINY, 6, 1))
    for name in learned:  # the learned codes themselves, not the nearest rounding of the stored weights
        assert params_equal(quant_layers(loaded)[name].params, quant_layers(qmodel)[name].params), name


def test_round_trip_after_reparameterization(tmp_path):
    """RepQ folds the LayerNorm shifts into the next linear layers; Swin's reduction gains a bias it was built
    without, and the bundle still reloads exactly."""
    name, kwargs = "swin_tiny_patch4_window7_224", {"img_size": 16, "patch_size": 2, "window_size": 4,
                                                     "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4),
                                                     "num_classes": 10}
    torch.manual_seed(0)
    float_model = timm.create_model(name, pretrained=False, **kwargs).eval()
    assert float_model.layers[1].downsample.reduction.bias is None
    qmodel, _ = quantize_ptq(float_model, torch.randn(8, 3, 16, 16), method="repq", wbits=4, abits=4,
                             search_settings=SETTINGS)
    assert qmodel.layers[1].downsample.reduction.bias is not None
    save_bundle(qmodel, tmp_path, model_spec={"name": name, "arch_kwargs": kwargs},
                recipe={"softmax": "log2", "minmax": False})
    _assert_reloads_exactly(qmodel, tmp_path, torch.randn(4, 3, 16, 16))


def test_weights_are_stored_packed(tmp_path):
    model = _quantized(VIT, "minmax", pairs=_mixed)
    bits = _mixed(model)
    _save(model, tmp_path, VIT, "minmax")
    tensors = safetensors.torch.load_file(str(tmp_path / MODEL_FILE))
    for name, layer in quant_layers(model).items():
        if not layer.has_weight:
            assert f"{name}.weight" not in tensors and f"{name}.weight.codes" not in tensors
        elif bits[name][0] == 16:
            assert tensors[f"{name}.weight"].dtype == torch.float32
            assert torch.equal(tensors[f"{name}.weight"], layer.weight)
            assert f"{name}.weight.codes" not in tensors
        else:
            wbits = bits[name][0]
            codes = tensors[f"{name}.weight.codes"]
            assert f"{name}.weight" not in tensors
            assert codes.dtype == torch.uint8 and codes.numel() == packed_nbytes(layer.weight.numel(), wbits)
            expected = weight_codes(layer.weight, layer.params.weight).to(torch.uint8).reshape(-1)
            assert torch.equal(unpack_codes(codes, wbits, layer.weight.numel()), expected)
            assert torch.equal(tensors[f"{name}.weight.scale"], layer.params.weight.scale)
            zeros = layer.params.weight.zero_point
            assert torch.equal(unpack_codes(tensors[f"{name}.weight.zero_point"], wbits, zeros.numel()),
                               zeros.reshape(-1).to(torch.uint8))
        for operand, params in enumerate(layer.params.inputs):
            prefix = f"{name}.inputs.{operand}."
            stored = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            assert stored.keys() == (set() if params is None else {"scale", "zero_point"}), name
            for field, value in stored.items():
                assert value.dtype == torch.float32 and torch.equal(value, getattr(params, field)), (name, field)


@pytest.mark.parametrize("wbits", [4, 3])
def test_size_is_close_to_theoretical(tmp_path, wbits):
    model, _ = quantize_ptq(_float_model(VIT), _images(VIT, 8, 0), method="minmax", wbits=wbits, abits=wbits,
                            head_bits=8)
    _save(model, tmp_path, VIT, "minmax")
    sizes = _assert_sizes(tmp_path)
    params = sum(q.weight.numel() * q.wbits for q in quant_layers(model).values() if q.has_weight) / 8
    assert sizes["packed_weight_bytes"] == pytest.approx(params)


# ---- validation ------------------------------------------------------------------------------------------
QKV, HEAD, AV = "blocks.0.attn.qkv", "head", "blocks.0.attn.matmul_av"


def _tiny_pairs(model) -> dict[str, tuple[int, int]]:
    pairs = uniform_pairs(quant_layers(model), 4, 4)
    return {**pairs, QKV: (3, 4), HEAD: (16, 8)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(TanQ model with a 3-bit qkv and a float-weight head, its bundle)."""
    model = _quantized(TINY, "dopq", pairs=_tiny_pairs, images=4)
    return model, _save(model, tmp_path_factory.mktemp("tiny"), TINY, "dopq")


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


def _set_tensor(key: str, value):
    return lambda d: _edit_tensors(d, lambda t: t.update({key: value(t[key]) if callable(value) else value}))


def _edit_layer(layer: str, edit):
    return lambda d: _edit_config(d, lambda c: edit(c["layers"][layer]))


LOAD_ERRORS = {
    "missing model file": (lambda d: (d / MODEL_FILE).unlink(), r"is missing model\.safetensors"),
    "missing config": (lambda d: (d / CONFIG_FILE).unlink(), r"is missing quant_config\.json"),
    "config not json": (lambda d: (d / CONFIG_FILE).write_text("{nope"), r"quant_config\.json is not valid JSON"),
    "config not an object": (lambda d: (d / CONFIG_FILE).write_text("[1]"), "must hold a JSON object"),
    "version 1": (lambda d: _edit_config(d, lambda c: c.update(format_version=1)),
                  r"unsupported bundle format_version 1 .* reads version 3: export the model again"),
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
    "missing float weight": (lambda d: _edit_tensors(d, lambda t: t.pop(f"{HEAD}.weight")),
                             "is missing tensor 'head.weight'"),
    "missing input scale": (lambda d: _edit_tensors(d, lambda t: t.pop(f"{QKV}.inputs.0.scale")),
                            r"layer 'blocks\.0\.attn\.qkv' input 0: missing tensor 'scale'"),
    "missing tanq centre": (lambda d: _edit_tensors(d, lambda t: t.pop(f"{AV}.inputs.0.c")),
                            r"layer 'blocks\.0\.attn\.matmul_av' input 0: missing tensor 'c'"),
    "codes too short": (_set_tensor(f"{QKV}.weight.codes", lambda v: v[:-1].clone()),
                        r"tensor 'blocks\.0\.attn\.qkv\.weight\.codes' has shape \(287,\), expected \(288,\)"),
    "scale shape": (_set_tensor(f"{QKV}.weight.scale", torch.ones(48)),
                    r"weight\.scale' has shape \(48,\), expected \(48, 1\)"),
    "zero point bytes": (_set_tensor(f"{QKV}.weight.zero_point", lambda v: torch.cat([v, v])),
                         r"weight\.zero_point' has shape \(36,\), expected \(18,\)"),
    "float tensor shape": (_set_tensor("pos_embed", torch.zeros(1, 5, 8)),
                           r"tensor 'pos_embed' has shape \(1, 5, 8\), expected \(1, 5, 16\)"),
    "codes dtype": (_set_tensor(f"{QKV}.weight.codes", lambda v: v.to(torch.int16)),
                    r"has dtype torch\.int16, expected torch\.uint8"),
    "input scale dtype": (_set_tensor(f"{QKV}.inputs.0.scale", lambda v: v.to(torch.int32)),
                          r"input 0: tensor 'scale' must be floating point, got torch\.int32"),
    "input zero point shape": (_set_tensor(f"{QKV}.inputs.0.zero_point", torch.zeros(2)),
                               r"scale shape \(\) differs from zero point shape \(2,\)"),
    "unexpected tensor": (_set_tensor("extra", torch.zeros(2)),
                          r"has 1 tensors the rebuilt model does not use, e\.g\. \['extra'\]"),
    "unexpected input tensor": (_set_tensor(f"{QKV}.inputs.0.a", torch.zeros(())),
                                r"tensors the rebuilt model does not use, e\.g\. \['blocks\.0\.attn\.qkv\.inputs\.0\.a'\]"),
    "input tensors of a float input": (_edit_layer(HEAD, lambda e: e.update(inputs=[None])),
                                       r"tensors the rebuilt model does not use, e\.g\. \['head\.inputs\.0\.scale'"),
    "unknown layer": (lambda d: _edit_config(d, lambda c: c["layers"].update({"blocks.9.mlp.fc1": {}})),
                      r"names layers \['blocks\.9\.mlp\.fc1'\] that the architecture does not have"),
    "missing layer": (lambda d: _edit_config(d, lambda c: c["layers"].pop(HEAD)),
                      "has no entry for quantization layer 'head'"),
    "weight shape": (_edit_layer(QKV, lambda e: e["weight"].update(shape=[48, 8])),
                     (r"layer 'blocks\.0\.attn\.qkv' weight shape \[48, 8\] does not match the architecture's "
                      r"\[48, 16\]")),
    "weight bits": (_edit_layer(QKV, lambda e: e["weight"].update(bits=12)),
                    "has packed weights with invalid bits 12"),
    "weight layout": (_edit_layer(QKV, lambda e: e["weight"].update(layout="diagonal")),
                      "weight layout must be one of"),
    "weight kind": (_edit_layer(QKV, lambda e: e["weight"].update(kind="uniform")),
                    "layer 'blocks.0.attn.qkv': a tensor grid cannot have scales of shape"),
    "weight of a weightless layer": (_edit_layer(AV, lambda e: e.update(weight={"kind": "uniform_weight"})),
                                     "layer 'blocks.0.attn.matmul_av' has no weight, but its entry stores one"),
    "input count": (_edit_layer(QKV, lambda e: e["inputs"].append(None)),
                    r"layer 'blocks\.0\.attn\.qkv' needs 1 'inputs' entries"),
    "input kind": (_edit_layer(AV, lambda e: e["inputs"][0].update(kind="cubic")),
                   "unknown params kind 'cubic'; known kinds are uniform, uniform_weight, tanq, log2, dynamic"),
    "input granularity": (_edit_layer(QKV, lambda e: e["inputs"][0].update(granularity="row")),
                          "granularity must be one of"),
    "input bits": (_edit_layer(QKV, lambda e: e["inputs"][0].update(bits=16)),
                   "activation bits must be an int in 1..8"),
    "entry not an object": (lambda d: _edit_config(d, lambda c: c["layers"].update({QKV: [1]})),
                            "layer 'blocks.0.attn.qkv' entry must be an object"),
}


@pytest.mark.parametrize("case", list(LOAD_ERRORS), ids=list(LOAD_ERRORS))
def test_load_errors(case, tiny, tmp_path):
    edit, message = LOAD_ERRORS[case]
    directory = _copy(tiny[1], tmp_path)
    edit(directory)
    with pytest.raises(BundleError, match=message):
        load_quantized(directory)


def test_version_2_bundle_is_refused(tiny, tmp_path):
    """A bundle of the previous format (quantizer-module state: per-layer ``weights``/``activations`` entries and
    one ``activation_params`` tensor) is not read; the error names its version and the version this mpq reads."""
    directory = _copy(tiny[1], tmp_path)

    def as_version_2(config):
        config["format_version"] = 2
        config["layers"] = {name: {"component": e["component"], "wbits": e["wbits"], "abits": e["abits"],
                                   "weights": {"kind": "uniform_per_channel", "stored": "packed"},
                                   "activations": [{"kind": "uniform", "offset": 0}]}
                            for name, e in config["layers"].items()}

    _edit_config(directory, as_version_2)
    _edit_tensors(directory, lambda t: t.update(activation_params=torch.zeros(8)))
    with pytest.raises(BundleError, match=r"format_version 2 .*reads version 3: export the model again") as info:
        load_quantized(directory)
    assert "2" in str(info.value) and "3" in str(info.value)


def test_tiny_bundle_reloads_exactly(tiny):
    model, bundle = tiny
    loaded = _assert_reloads_exactly(model, bundle, _images(TINY, 4, 3))
    layers = quant_layers(loaded)
    assert (layers[QKV].wbits, layers[QKV].abits) == (3, 4) and layers[QKV].params.weight.bits == 3
    assert layers[HEAD].params.weight is None and layers[HEAD].abits == 8
    assert torch.equal(layers[HEAD].weight, quant_layers(model)[HEAD].weight)  # a float weight stays float
    saved, reloaded = quant_layers(model)[AV].params.inputs[0], layers[AV].params.inputs[0]
    assert (reloaded.kind, reloaded.bits) == ("tanq", 4)  # the post-softmax compander, with its fitted a and c
    assert torch.equal(reloaded.a, saved.a) and torch.equal(reloaded.c, saved.c)


def test_load_without_resolved_arch_uses_the_name(tiny, tmp_path):
    model, bundle = tiny
    directory = _copy(bundle, tmp_path)
    _edit_config(directory, lambda c: [c["model"].pop(k) for k in ("arch", "timm_kwargs")])
    _assert_reloads_exactly(model, directory, _images(TINY, 4, 3))


def test_load_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_quantized(tmp_path / "nowhere")


def test_builtin_bundle_reloads_exactly_without_the_builtin_weights(tmp_path, monkeypatch):
    from quant import models
    from quant.data import load_dataset

    name = "builtin:vit-digits"
    calib = load_dataset("builtin:digits", split="calib", model_name=name).images[:32]
    test = load_dataset("builtin:digits", split="test", model_name=name).images[:100]
    qmodel, _ = quantize_ptq(models.build_model(name), calib, method="minmax", wbits=4, abits=4)
    save_bundle(qmodel, tmp_path, model_spec={"name": name, "arch_kwargs": {}, "weights_path": None},
                recipe={"softmax": "uniform", "minmax": True})
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["model"]["arch"] == "vit_tiny_patch16_224" and config["model"]["timm_kwargs"]["depth"] == 6
    built = []
    original = models.build_model
    monkeypatch.setattr(models, "build_model", lambda n, *a, **k: built.append(n) or original(n, *a, **k))
    _assert_reloads_exactly(qmodel, tmp_path, test)
    assert built == ["vit_tiny_patch16_224"]


@pytest.fixture()
def tiny_model():
    return _quantized(TINY, "minmax", images=4)


def _nothing_written(directory: Path) -> bool:
    return not (directory / MODEL_FILE).exists() and not (directory / CONFIG_FILE).exists()


def test_save_rejects_unknown_model(tiny_model, tmp_path):
    with pytest.raises(BundleError, match="cannot describe model 'vit_nope'"):
        save_bundle(tiny_model, tmp_path, model_spec={"name": "vit_nope"}, recipe={"softmax": "uniform",
                                                                                   "minmax": True})
    assert _nothing_written(tmp_path)


def test_save_rejects_fractional_zero_points(tiny_model, tmp_path):
    layer = quant_layers(tiny_model)[QKV]
    w = layer.params.weight
    layer.load_params(LayerParams(WeightParams(w.scale, w.zero_point + 0.5, w.bits), layer.params.inputs))
    with pytest.raises(BundleError, match=r"layer 'blocks\.0\.attn\.qkv': weight zero points must be integers in "
                                          r"\[0, 15\]"):
        _save(tiny_model, tmp_path, TINY, "minmax")
    assert _nothing_written(tmp_path)


def test_save_rejects_zero_points_outside_the_codes(tiny_model, tmp_path):
    layer = quant_layers(tiny_model)[QKV]
    w = layer.params.weight
    layer.load_params(LayerParams(WeightParams(w.scale, w.zero_point + 16, w.bits), layer.params.inputs))
    with pytest.raises(BundleError, match=r"weight zero points must be integers in \[0, 15\]"):
        _save(tiny_model, tmp_path, TINY, "minmax")


def test_save_rejects_training_params(tiny_model, tmp_path):
    """A layer still running with reconstruction's training values (soft AdaRound weights, QDrop inputs) cannot
    be stored: the error says which layer and what to do; nothing is written."""
    layer = quant_layers(tiny_model)[QKV]
    params = layer.params
    layer.load_params(LayerParams(soft_rounded(layer.weight, params.weight), params.inputs))
    with pytest.raises(BundleError, match=r"layer 'blocks\.0\.attn\.qkv' runs with training params "
                                          r"\(SoftRoundedWeight\); finish reconstruction before saving"):
        _save(tiny_model, tmp_path, TINY, "minmax")
    layer.load_params(LayerParams(params.weight, (QDropInput(params.inputs[0], lambda shape, dtype: None),)))
    with pytest.raises(BundleError, match=r"layer 'blocks\.0\.attn\.qkv' input 0: cannot store params of type "
                                          "QDropInput"):
        _save(tiny_model, tmp_path, TINY, "minmax")
    assert _nothing_written(tmp_path)


def test_save_rejects_params_not_reproducible_from_codes(tiny_model, tmp_path, monkeypatch):
    """The saver checks that ``(codes - zero) * scale`` is exactly what the layer computes; a fake quantizer that
    disagreed (here: one returning the float weight) would otherwise ship a different model."""
    import quant.bundle.save as save_module

    monkeypatch.setattr(save_module, "fake_quant_weight", lambda weight, params: weight)
    with pytest.raises(BundleError, match="cannot be stored as integer codes"):
        _save(tiny_model, tmp_path, TINY, "minmax")
    assert _nothing_written(tmp_path)
