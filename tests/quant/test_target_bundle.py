"""Bundles of onnxruntime-cpu models: target, block size, symmetric and dynamic settings persist, block-wise
scales are stored as [out, n_blocks, 1], and a mixed assignment over every form reloads bit-exactly."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from quant.bundle import CONFIG_FILE, MODEL_FILE, bundle_sizes, load_quantized, save_bundle
from quant.models import build_model, model_info
from quant.ptq import quantize_ptq
from quant.range_search import SearchSettings
from quant.target import forms_for
from quant.wrap import quant_layers, set_bits_

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


@pytest.mark.parametrize(("name", "method", "block_size"), [
    ("builtin:vit-digits", "dopq", 32),
    ("builtin:swin-digits", "minmax", 64),  # swin's first stage has K=48 < 64: one zero-padded block
], ids=["vit-dopq", "swin-minmax-b64"])
def test_mixed_forms_reload_bit_exact(name, method, block_size, tmp_path):
    torch.manual_seed(0)
    images = torch.randn(8, *model_info(name, {})["input_size"], generator=torch.Generator().manual_seed(2))
    qmodel, _ = quantize_ptq(build_model(name, {}), images, method=method, wbits=8, abits=8, head_bits=8,
                             batch_size=8, target=ORT, block_size=block_size,
                             search_settings=SearchSettings(images=8))
    set_bits_(qmodel, _every_form(qmodel))
    layers = quant_layers(qmodel)
    used = {layer.form.name for layer in layers.values()}
    assert used == {"fp32", "int8", "w8", "w4", "w4a8"}
    save_bundle(qmodel, tmp_path, model_spec={"name": name, "arch_kwargs": {}},
                recipe={"softmax": "tanq", "minmax": method == "minmax"})
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert (config["target"], config["block_size"]) == (ORT, block_size)
    tensors = safetensors.torch.load_file(str(tmp_path / MODEL_FILE))
    padded = 0
    for layer_name, layer in layers.items():
        entry = config["layers"][layer_name]
        form = layer.form.name
        if form in ("w8", "w4", "w4a8"):
            k = layer.in_features
            n_blocks = -(-k // block_size)
            padded += k % block_size != 0
            assert entry["weights"]["block_size"] == block_size
            assert tuple(tensors[f"{layer_name}.weight.scale"].shape) == (layer.out_features, n_blocks, 1)
        elif form == "int8" and layer.has_weight:
            assert entry["weights"]["symmetric"] is True
        if form == "w4a8":
            assert entry["activations"][0]["dynamic_block"] == block_size
        for act in entry["activations"]:
            assert act.get("include_zero") is True
    if block_size == 64:
        assert padded > 0
    reloaded = load_quantized(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(images), qmodel(images))
    again = quant_layers(reloaded)
    for layer_name, layer in layers.items():
        assert again[layer_name].target == ORT and again[layer_name].block_size == block_size
        assert again[layer_name].form == layer.form, layer_name
    sizes = bundle_sizes(tmp_path)
    assert 0 <= sizes["overhead"] < 0.2


def test_sim_bundle_config_has_no_target_keys(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(4, *model_info("builtin:vit-digits", {})["input_size"])
    qmodel, _ = quantize_ptq(build_model("builtin:vit-digits", {}), images, method="minmax", wbits=4, abits=4)
    save_bundle(qmodel, tmp_path, model_spec={"name": "builtin:vit-digits", "arch_kwargs": {}},
                recipe={"softmax": "uniform", "minmax": True})
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert "target" not in config and "block_size" not in config
    entry = config["layers"]["blocks.0.mlp.fc1"]
    assert "block_size" not in entry["weights"] and "symmetric" not in entry["weights"]
    reloaded = load_quantized(tmp_path)
    assert quant_layers(reloaded)["blocks.0.mlp.fc1"].target == "sim"
