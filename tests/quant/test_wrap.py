"""Wrapping real timm architectures (random weights): every quantization point, float equivalence, bits."""

from collections import Counter

import pytest
import timm
import torch

from quant.wrap import (
    quant_layers,
    quantization_map,
    set_bits_,
    set_quant_enabled_,
    set_uniform_bits_,
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


def test_every_quantization_point_is_wrapped(arch):
    name, model, blocks, reductions = arch
    import copy

    wrapped = wrap_model_(copy.deepcopy(model))
    counts = Counter(layer.component for layer in quant_layers(wrapped).values())
    assert counts == Counter({"qkv": blocks, "proj": blocks, "fc1": blocks, "fc2": blocks, "matmul_qk": blocks,
                              "matmul_av": blocks, "patch_embed": 1, "head": 1, **({"reduction": reductions}
                                                                                      if reductions else {})})
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert set(linears) <= set(quant_layers(wrapped))


def test_disabled_quantization_matches_float(arch):
    _, model, _, _ = arch
    import copy

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        wrapped = wrap_model_(copy.deepcopy(model))
        set_quant_enabled_(wrapped, False, False)
        out_disabled = wrapped(x)
        set_quant_enabled_(wrapped, True, True)
        set_uniform_bits_(wrapped, 16, 16, head_bits=16)
        out_16 = wrapped(x)
    assert (out_disabled - reference).abs().max().item() < 1e-5
    assert (out_16 - reference).abs().max().item() < 1e-5


def test_layer_names_are_timm_names_and_bits_settable():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2).eval()
    wrapped = wrap_model_(model)
    names = list(quant_layers(wrapped))
    assert names[:6] == ["patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.matmul_qk",
                         "blocks.0.attn.matmul_av", "blocks.0.attn.proj", "blocks.0.mlp.fc1"]
    set_bits_(wrapped, {"blocks.0.attn.qkv": (3, 5), "blocks.0.attn.matmul_av": (16, 6)})
    qmap = quantization_map(wrapped)
    assert qmap["blocks.0.attn.qkv"]["weights"]["bits"] == 3
    assert qmap["blocks.0.attn.qkv"]["activations"][0]["bits"] == 5
    assert [a["bits"] for a in qmap["blocks.0.attn.matmul_av"]["activations"]] == [6, 6]
    assert qmap["blocks.0.attn.matmul_av"]["activations"][0]["kind"] == "tanq"
    with pytest.raises(KeyError, match="unknown quantization layers"):
        set_bits_(wrapped, {"blocks.9.attn.qkv": (4, 4)})


def test_wrapping_twice_is_refused():
    model = wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1))
    with pytest.raises(ValueError, match="already wrapped"):
        wrap_model_(model)


def test_unknown_softmax_quantizer_is_refused():
    with pytest.raises(ValueError, match="softmax quantizer must be one of"):
        wrap_model_(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1), softmax="cubic")
