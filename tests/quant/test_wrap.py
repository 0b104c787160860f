"""Wrapping real timm architectures (random weights): every quantization point, float equivalence, layers that run
with exactly the params they are given (validated, addressed by timm names, moved with the model)."""

import copy
from collections import Counter

import pytest
import timm
import torch

from quant.quantizers import (
    LayerParams,
    TanQParams,
    WeightParams,
    fake_quant_weight,
    fit_uniform,
    fit_weight,
    params_equal,
)
from quant.wrap import (
    check_block_size,
    forms_of,
    load_params_,
    model_target,
    quant_layers,
    quantization_map,
    uniform_pairs,
    wrap_model_,
)

ARCHS = {
    # name: (kwargs, blocks, reductions)
    "vit_small_patch16_224": ({}, 12, 0),
    "deit_tiny_patch16_224": ({}, 12, 0),
    "swin_tiny_patch4_window7_224": ({}, 12, 3),
}


@pytest.fixture(scope="module", params=list(ARCHS), ids=list(ARCHS))
def arch(request):
    name = request.param
    kwargs, blocks, reductions = ARCHS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    return name, model, blocks, reductions


def _layer_params(layer, wbits, abits) -> LayerParams:
    """Per-tensor params of a layer fitted on random data (what they are does not matter here, only that they
    quantize)."""
    sample = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    weight = fit_weight(layer.weight, wbits, minmax=True) if layer.has_weight and wbits < 16 else None
    return LayerParams(weight, tuple(fit_uniform(sample, abits) for _ in range(layer.n_inputs)))


def test_every_quantization_point_is_wrapped(arch):
    _, model, blocks, reductions = arch
    wrapped = wrap_model_(copy.deepcopy(model))
    counts = Counter(layer.component for layer in quant_layers(wrapped).values())
    assert counts == Counter({"qkv": blocks, "proj": blocks, "fc1": blocks, "fc2": blocks, "matmul_qk": blocks,
                              "matmul_av": blocks, "patch_embed": 1, "head": 1, **({"reduction": reductions}
                                                                                      if reductions else {})})
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert set(linears) <= set(quant_layers(wrapped))
    assert set(wrapped.state_dict()) == set(model.state_dict())  # timm's parameter names are kept


def test_wrapped_model_starts_float_and_float_params_are_float_again(arch):
    _, model, _, _ = arch
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    wrapped = wrap_model_(copy.deepcopy(model))
    layers = quant_layers(wrapped)
    assert all(params_equal(layer.params, LayerParams.float(layer.n_inputs)) for layer in layers.values())
    with torch.no_grad():
        reference = model(x)
        fresh = wrapped(x)
        first = list(layers)[:6]  # the patch embedding and the first block's layers
        load_params_(wrapped, {n: _layer_params(layers[n], 4, 4) for n in first})
        quantized = wrapped(x)
        load_params_(wrapped, {})
        floating = wrapped(x)
    # unfused attention: the float model's function up to float rounding; float params are exactly float again
    assert (fresh - reference).abs().max().item() < 1e-5
    assert (quantized - reference).abs().max().item() > 1e-3
    assert torch.equal(floating, fresh)


def test_layer_names_are_timm_names_and_params_are_loadable_by_name():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2).eval()
    wrapped = wrap_model_(model)
    layers = quant_layers(wrapped)
    names = list(layers)
    assert names[:6] == ["patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.matmul_qk",
                         "blocks.0.attn.matmul_av", "blocks.0.attn.proj", "blocks.0.mlp.fc1"]
    softmax = TanQParams(torch.tensor(2.0), torch.tensor(0.7), 6)
    qkv = _layer_params(layers["blocks.0.attn.qkv"], 3, 5)
    av = LayerParams(None, (softmax, fit_uniform(torch.randn(100), 6)))
    load_params_(wrapped, {"blocks.0.attn.qkv": qkv, "blocks.0.attn.matmul_av": av})
    assert layers["blocks.0.attn.qkv"].params is qkv and layers["blocks.0.attn.matmul_av"].params is av
    assert (layers["blocks.0.attn.qkv"].wbits, layers["blocks.0.attn.qkv"].abits) == (3, 5)
    assert (layers["blocks.0.attn.matmul_av"].wbits, layers["blocks.0.attn.matmul_av"].abits) == (16, 6)
    assert torch.equal(layers["blocks.0.attn.qkv"].quantized_weight(),
                       fake_quant_weight(layers["blocks.0.attn.qkv"].weight, qkv.weight))
    qmap = quantization_map(wrapped)
    assert qmap["blocks.0.attn.qkv"]["weight"]["bits"] == 3 and qmap["blocks.0.attn.qkv"]["weight"]["layout"] == \
        "channel"
    assert qmap["blocks.0.attn.qkv"]["inputs"] == [{"kind": "uniform", "bits": 5, "granularity": "tensor"}]
    assert [a["kind"] for a in qmap["blocks.0.attn.matmul_av"]["inputs"]] == ["tanq", "uniform"]
    assert qmap["blocks.0.attn.matmul_av"]["weight"] is None
    assert qmap["blocks.0.mlp.fc1"] == {"component": "fc1", "wbits": 16, "abits": 16, "weight": None,
                                        "inputs": [None]}
    # unknown names raise before any layer changes; the other layers keep theirs with rest_float=False
    with pytest.raises(KeyError, match="unknown quantization layers"):
        load_params_(wrapped, {"blocks.0.attn.proj": qkv, "blocks.9.attn.qkv": qkv})
    assert quantization_map(wrapped) == qmap
    load_params_(wrapped, {"blocks.0.attn.proj": _layer_params(layers["blocks.0.attn.proj"], 4, 4)},
                 rest_float=False)
    assert layers["blocks.0.attn.qkv"].params is qkv and layers["blocks.0.attn.proj"].wbits == 4
    load_params_(wrapped, {"blocks.0.attn.proj": _layer_params(layers["blocks.0.attn.proj"], 4, 4)})
    assert layers["blocks.0.attn.qkv"].wbits == 16 and layers["blocks.0.attn.matmul_av"].abits == 16


def test_load_params_refuses_params_that_do_not_fit_the_layer():
    layers = quant_layers(wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1)))
    qkv, matmul = layers["blocks.0.attn.qkv"], layers["blocks.0.attn.matmul_qk"]
    weight = fit_weight(qkv.weight, 4)
    act = fit_uniform(torch.randn(100), 4)
    with pytest.raises(TypeError, match="takes LayerParams"):
        qkv.load_params(weight)
    with pytest.raises(ValueError, match="has 1 quantized inputs, params give 2"):
        qkv.load_params(LayerParams(weight, (act, act)))
    with pytest.raises(ValueError, match="has no weight to quantize"):
        matmul.load_params(LayerParams(weight, (act, act)))
    with pytest.raises(ValueError, match="does not fit a weight of shape"):
        qkv.load_params(LayerParams(fit_weight(layers["blocks.0.attn.proj"].weight, 4), (act,)))
    with pytest.raises(ValueError, match=r"block layout needs \(576, 6, 1\)"):
        qkv.load_params(LayerParams(fit_weight(layers["blocks.0.attn.proj"].weight, 4, layout="block",
                                               block_size=32), (act,)))
    bad_codes = WeightParams(weight.scale, weight.zero_point, 4, codes=torch.zeros(576, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="codes shape"):
        qkv.load_params(LayerParams(bad_codes, (act,)))
    with pytest.raises(TypeError, match="must be WeightParams"):
        qkv.load_params(LayerParams(act, (act,)))
    assert params_equal(qkv.params, LayerParams.float(1))  # nothing was loaded by the refused calls


def test_params_move_and_convert_with_the_model():
    model = wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1, img_size=32,
                                          patch_size=8).eval())
    layers = quant_layers(model)
    load_params_(model, {n: _layer_params(layer, 4, 4) for n, layer in layers.items()})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        model.double()
        again = model(x.double())
    for layer in layers.values():
        for p in (layer.params.weight, *layer.params.inputs):
            if p is not None:
                assert p.scale.dtype == torch.float64 and p.zero_point.dtype == torch.float64
    assert again.dtype == torch.float64
    assert torch.allclose(again.float(), expected, atol=1e-4)


def test_uniform_pairs_pin_head_patch_and_fixed_layers():
    layers = quant_layers(wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1)))
    pairs = uniform_pairs(layers, 3, 5, head_bits=8, fixed={"blocks.0.mlp.fc2": (6, 6)})
    assert pairs["patch_embed.proj"] == pairs["head"] == (8, 8)
    assert pairs["blocks.0.attn.qkv"] == (3, 5) and pairs["blocks.0.mlp.fc2"] == (6, 6)
    assert pairs["blocks.0.attn.matmul_qk"] == pairs["blocks.0.attn.matmul_av"] == (16, 5)
    assert uniform_pairs(layers, 3, 5, head_bits=None)["head"] == (3, 5)
    assert uniform_pairs({n: layer.component for n, layer in layers.items()}, 3, 5) == uniform_pairs(layers, 3, 5)
    with pytest.raises(KeyError, match="unknown quantization layers"):
        uniform_pairs(layers, 4, 4, fixed={"blocks.3.mlp.fc2": (4, 4)})


def test_runtime_target_layers_name_their_forms():
    model = wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1), target="onnxruntime-cpu",
                        block_size=64)
    assert model_target(model) == ("onnxruntime-cpu", 64)
    assert set(forms_of(model).values()) == {"fp32"}
    layers = quant_layers(model)
    qkv = layers["blocks.0.attn.qkv"]
    load_params_(model, {"blocks.0.attn.qkv": LayerParams(fit_weight(qkv.weight, 4, layout="block", block_size=64),
                                                          (None,))})
    assert forms_of(model)["blocks.0.attn.qkv"] == "w4"
    assert quantization_map(model)["blocks.0.attn.qkv"]["form"] == "w4"
    assert quantization_map(model)["blocks.0.attn.qkv"]["weight"]["block_size"] == 64


def test_wrapping_twice_and_unknown_targets_are_refused():
    model = wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1))
    with pytest.raises(ValueError, match="already wrapped"):
        wrap_model_(model)
    with pytest.raises(ValueError, match="target must be one of"):
        wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1), target="tensorrt")
    with pytest.raises(ValueError, match="power of two >= 16"):
        wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1), block_size=24)
    assert check_block_size(16) == 16
    with pytest.raises(ValueError, match="power of two >= 16"):
        check_block_size(8)
    with pytest.raises(ValueError, match="no quantization layers"):
        quant_layers(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1))
