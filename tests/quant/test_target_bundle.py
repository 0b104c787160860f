"""Bundles of onnxruntime-cpu models: target and block size persist, the quantization map names every layer's form
and its params (symmetric int8 weights, block-wise weights with [out, n_blocks, 1] scales, dynamic int8 input
blocks, per-tensor uint8 input grids), and a mixed assignment over every form reloads bit-exactly, with nearest
and with learned rounding."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from quant.bundle import CONFIG_FILE, MODEL_FILE, bundle_sizes, load_quantized, save_bundle
from quant.calibration import SearchSettings, calibrate_table
from quant.models import build_model, model_info
from quant.packing import unpack_codes
from quant.ptq import calibration_plan, quantize_ptq, reparameterize_for_, wrapped_copy
from quant.quantizers import LayerParams, WeightParams, params_equal, weight_codes
from quant.reconstruct import reconstruct_
from quant.target import forms_for
from quant.wrap import forms_of, load_params_, quant_layers, uniform_pairs

torch.set_num_threads(1)
ORT = "onnxruntime-cpu"


def _every_form(model) -> dict[str, tuple[int, int]]:
    """Cycle each layer through its kind's forms, so every form appears on several layers."""
    out = {}
    for index, (name, layer) in enumerate(quant_layers(model).items()):
        forms = forms_for(ORT, layer.component)
        form = forms[index % len(forms)]
        out[name] = (form.wbits, form.abits)
    return out


def _mixed_target_model(float_model, images, method: str, block_size: int):
    """A copy of ``float_model`` wrapped for onnxruntime-cpu, every layer at the form ``_every_form`` gives it
    (the table entries of a job whose reference is the int8 form)."""
    model = wrapped_copy(float_model, target=ORT, block_size=block_size)
    reference = uniform_pairs(quant_layers(model), 8, 8)
    reparameterize_for_(model, images, method=method, reference=reference)
    assignment = _every_form(model)
    plan = calibration_plan(model, method=method, pairs={n: (p,) for n, p in assignment.items()},
                            reference=reference)
    table = calibrate_table(model, images, plan, settings=SearchSettings(images=8), batch_size=8)
    load_params_(model, table.select(assignment))
    return model


def _stored(layer) -> LayerParams:
    """The layer's params with the weight's integer codes explicit (what the bundle stores)."""
    params, weight = layer.params, layer.params.weight
    if weight is None or weight.codes is not None:
        return params
    codes = weight_codes(layer.weight.detach(), weight).to(torch.uint8)
    return LayerParams(WeightParams(weight.scale, weight.zero_point, weight.bits, weight.layout, weight.block_size,
                                    codes), params.inputs)


def _assert_reloads_exactly(qmodel, directory, images, block_size: int):
    reloaded = load_quantized(directory)
    with torch.no_grad():
        assert torch.equal(reloaded(images), qmodel(images))
    again = quant_layers(reloaded)
    for name, layer in quant_layers(qmodel).items():
        assert again[name].target == ORT and again[name].block_size == block_size
        assert again[name].form == layer.form, name
        assert params_equal(again[name].params, _stored(layer)), name
    return reloaded


@pytest.mark.parametrize(("name", "method", "block_size"), [
    ("builtin:vit-digits", "dopq", 32),
    ("builtin:swin-digits", "minmax", 64),  # swin's first stage has K=48 < 64: one zero-padded block
], ids=["vit-dopq", "swin-minmax-b64"])
def test_mixed_forms_reload_bit_exact(name, method, block_size, tmp_path):
    torch.manual_seed(0)
    images = torch.randn(8, *model_info(name, {})["input_size"], generator=torch.Generator().manual_seed(2))
    qmodel = _mixed_target_model(build_model(name, {}), images, method, block_size)
    layers = quant_layers(qmodel)
    assert set(forms_of(qmodel).values()) == {"fp32", "int8", "w8", "w4", "w4a8"}
    save_bundle(qmodel, tmp_path, model_spec={"name": name, "arch_kwargs": {}},
                recipe={"softmax": "tanq", "minmax": method == "minmax"})
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert (config["target"], config["block_size"]) == (ORT, block_size)
    tensors = safetensors.torch.load_file(str(tmp_path / MODEL_FILE))
    padded = 0
    for layer_name, layer in layers.items():
        entry = config["layers"][layer_name]
        form = layer.form.name
        assert (entry["form"], entry["wbits"], entry["abits"]) == (form, layer.wbits, layer.abits)
        weight = entry["weight"]
        if form in ("w8", "w4", "w4a8"):
            k = layer.in_features
            n_blocks = -(-k // block_size)
            padded += k % block_size != 0
            assert (weight["layout"], weight["block_size"], weight["bits"]) == ("block", block_size, layer.wbits)
            assert tuple(tensors[f"{layer_name}.weight.scale"].shape) == (layer.out_features, n_blocks, 1)
        elif form == "int8" and layer.has_weight:
            assert (weight["layout"], weight["block_size"], weight["bits"]) == ("symmetric", None, 8)
            zeros = unpack_codes(tensors[f"{layer_name}.weight.zero_point"], 8, layer.weight.shape[0])
            assert torch.all(zeros == 128)  # int8 codes with zero point 0 after the shift
        else:
            assert weight is None  # fp32, or a weightless matmul
        if form == "w4a8":
            assert entry["inputs"] == [{"kind": "dynamic", "bits": 8, "granularity": "block",
                                        "block_size": block_size}]
        elif form == "int8":
            for operand, meta in enumerate(entry["inputs"]):
                assert meta == {"kind": "uniform", "bits": 8, "granularity": "tensor"}, layer_name
                zero = tensors[f"{layer_name}.inputs.{operand}.zero_point"]
                assert zero.shape == () and float(zero) == round(float(zero)) and 0 <= float(zero) <= 255
        else:
            assert entry["inputs"] == [None] * layer.n_inputs  # w8, w4 and fp32 keep float inputs
    if block_size == 64:
        assert padded > 0
    _assert_reloads_exactly(qmodel, tmp_path, images, block_size)
    sizes = bundle_sizes(tmp_path)
    assert sizes["theoretical_bytes"] <= sizes["actual_bytes"] - sizes["header_bytes"] \
        <= 1.001 * sizes["theoretical_bytes"]


def test_reconstructed_target_model_reloads_bit_exact(tmp_path):
    """Learned codes on every weight layout of the target (symmetric int8, blocks at 8 and 4 bits) and learned
    int8 input scales are stored and reloaded exactly."""
    name = "builtin:vit-digits"
    float_model = build_model(name, {})
    images = torch.randn(8, *model_info(name, {})["input_size"], generator=torch.Generator().manual_seed(2))
    qmodel = _mixed_target_model(float_model, images, "dopq", 32)
    start = {n: layer.params for n, layer in quant_layers(qmodel).items()}
    # small input-scale steps: 8-bit grids are fine, the default rate (scaled up for 12 iterations) overshoots
    report = reconstruct_(qmodel, float_model, images, loss="mse", iters=12, batch_size=8, max_blocks=4,
                          round_lr=1e-2, act_lr=1e-5)
    assert any(b.kept == "reconstructed" and b.rounded_layers for b in report.blocks)
    learned = {layer.params.weight.layout for layer in quant_layers(qmodel).values()
               if layer.params.weight is not None and layer.params.weight.codes is not None
               and not torch.equal(layer.params.weight.codes.float(),
                                   weight_codes(layer.weight, layer.params.weight.without_codes()))}
    assert learned == {"symmetric", "block"}  # codes that differ from nearest rounding, on both layouts
    moved = [n for n, layer in quant_layers(qmodel).items() if layer.form.name == "int8"
             and not params_equal(layer.params.inputs[0], start[n].inputs[0])]
    assert moved, "no int8 input scale was learned"
    save_bundle(qmodel, tmp_path, model_spec={"name": name, "arch_kwargs": {}},
                recipe={"softmax": "tanq", "minmax": False})
    _assert_reloads_exactly(qmodel, tmp_path, images, 32)


def test_sim_bundle_config_has_no_target_keys(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(4, *model_info("builtin:vit-digits", {})["input_size"])
    qmodel, _ = quantize_ptq(build_model("builtin:vit-digits", {}), images, method="minmax", wbits=4, abits=4)
    save_bundle(qmodel, tmp_path, model_spec={"name": "builtin:vit-digits", "arch_kwargs": {}},
                recipe={"softmax": "uniform", "minmax": True})
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert "target" not in config and "block_size" not in config
    entry = config["layers"]["blocks.0.mlp.fc1"]
    assert "form" not in entry
    assert (entry["weight"]["layout"], entry["weight"]["block_size"]) == ("channel", None)
    reloaded = load_quantized(tmp_path)
    assert quant_layers(reloaded)["blocks.0.mlp.fc1"].target == "sim"
    assert quant_layers(reloaded)["blocks.0.mlp.fc1"].form is None
