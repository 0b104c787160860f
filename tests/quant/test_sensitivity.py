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
    # independent recomputation: quantize only one component type at W4A4, measure the KL to the float model
    # with plain torch, and divide by the raw (unscaled) sum of the table's Omegas of its layers
    model = copy.deepcopy(qmodel)
    layers = quant_layers(model)
    set_quant_enabled_(model, False, False)
    with torch.no_grad():
        float_logp = F.log_softmax(model(images[:12]), -1)
    for component, factor in table.type_factors.items():
        members = [n for n, c in table.components.items() if c == component]
        set_quant_enabled_(model, False, False)
        for name in members:
            layers[name].set_bits(4 if layers[name].has_weight else None, 4)
            layers[name].set_quant_enabled(True, True)
        with torch.no_grad():
            quant_logp = F.log_softmax(model(images[:12]), -1)
        measured = (float_logp.exp() * (float_logp - quant_logp)).sum(-1).mean().item()
        raw = sum(table.weight[n].get(4, 0.0) + table.act[n][4] for n in members)
        assert table.measured_type_kl[component] == pytest.approx(measured, rel=1e-4, abs=1e-9), component
        expected = 1.0 if raw <= 1e-12 or measured <= 0 else min(max(measured / raw, 0.05), 20.0)
        assert factor == pytest.approx(expected, rel=1e-4), component
    assert len({round(f, 6) for f in table.type_factors.values()}) > 1  # not all clamped to one value
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
