"""LampQ Fisher sensitivity: hooks equal brute force, Omega behaves, type factors calibrate."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from quant.ptq import quantize_ptq
from quant.sensitivity import SensitivityTable, _FisherHooks, compute_sensitivity
from quant.wrap import quant_layers, set_quant_enabled_


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=1,
                              embed_dim=32, num_heads=2, num_classes=5).eval()
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(12) % 5
    qmodel, _ = quantize_ptq(model, images, method="dopq", wbits=4, abits=4, head_bits=None)
    return model, qmodel, images, labels


def test_per_image_weight_fisher_matches_brute_force(tiny):
    _, qmodel, images, labels = tiny
    qmodel = copy.deepcopy(qmodel)
    set_quant_enabled_(qmodel, False, False)
    layers = quant_layers(qmodel)
    names = ["blocks.0.attn.qkv", "blocks.0.mlp.fc2", "head", "patch_embed.proj"]
    brute = {n: torch.zeros_like(layers[n].weight) for n in names}
    for i in range(len(images)):
        qmodel.zero_grad()
        F.cross_entropy(qmodel(images[i : i + 1]), labels[i : i + 1], reduction="sum").backward()
        for n in names:
            brute[n] += layers[n].weight.grad.pow(2)
    params = list(qmodel.parameters())
    for p in params:
        p.requires_grad_(False)
    hooks = _FisherHooks(layers, [4])
    x = images.clone().requires_grad_(True)
    F.cross_entropy(qmodel(x), labels, reduction="sum").backward()
    hooks.remove()
    for n in names:
        got = hooks.fisher[n].reshape(brute[n].shape)
        assert torch.allclose(got, brute[n], rtol=1e-3, atol=1e-9), n


def test_omega_decreases_with_bits_and_is_zero_at_float(tiny):
    _, qmodel, images, labels = tiny
    table = compute_sensitivity(qmodel, images, labels, type_aware=False, batch_size=6)
    for name, per_bits in table.weight.items():
        if table.components[name].startswith("matmul"):
            assert per_bits == {}
            continue
        values = [per_bits[b] for b in sorted(per_bits)]
        assert values[0] > values[-1] >= 0, name
    for name, per_bits in table.act.items():
        assert per_bits[3] >= per_bits[8], name
    assert table.omega("blocks.0.attn.qkv", 16, 16) == 0.0
    assert table.loss == "cross_entropy"


def test_type_factors_match_measured_kl(tiny):
    _, qmodel, images, _ = tiny
    table = compute_sensitivity(qmodel, images, None, type_aware=True, batch_size=6, alpha_images=12)
    assert set(table.type_factors) == {"patch_embed", "qkv", "matmul_qk", "matmul_av", "proj", "fc1", "fc2", "head"}
    for component, factor in table.type_factors.items():
        assert 0.05 <= factor <= 20.0
        members = [n for n, c in table.components.items() if c == component]
        predicted = sum(table.omega(n, 4 if table.weight[n] else 16, 4) for n in members)
        measured = table.measured_type_kl[component]
        if 0.05 < factor < 20.0 and measured > 1e-9:
            assert predicted == pytest.approx(measured, rel=1e-6), component
    assert table.loss == "kl"


def test_table_json_round_trip(tiny):
    _, qmodel, images, labels = tiny
    table = compute_sensitivity(qmodel, images, labels, batch_size=12, alpha_images=6)
    again = SensitivityTable.from_dict(table.to_dict())
    for name in table.components:
        assert again.omega(name, 3 if table.weight[name] else 16, 5) == pytest.approx(
            table.omega(name, 3 if table.weight[name] else 16, 5))


def test_sensitivity_leaves_model_state_unchanged(tiny):
    _, qmodel, images, labels = tiny
    before = {n: (l.wbits, l.abits) for n, l in quant_layers(qmodel).items()}
    out_before = qmodel(images).detach()
    compute_sensitivity(qmodel, images, labels, batch_size=12, alpha_images=6)
    assert {n: (l.wbits, l.abits) for n, l in quant_layers(qmodel).items()} == before
    assert torch.equal(qmodel(images).detach(), out_before)
    assert all(p.grad is None for p in qmodel.parameters())
