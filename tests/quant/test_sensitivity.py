"""LampQ Fisher sensitivity of a job's parameter table: hooks equal brute force, every Omega is computed on the exact
table entry (grouped scales included), Omega behaves with bits, type factors calibrate, runtime forms are keyed
by name, and the model is left as it was."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from quant.calibration import SearchSettings, calibrate_table
from quant.ptq import calibration_plan, reparameterize_for_, wrapped_copy
from quant.quantizers import fake_quant, quantize_weight
from quant.sensitivity import SensitivityTable, compute_sensitivity
from quant.sensitivity.fisher import fisher_pass
from quant.target import forms_for
from quant.wrap import load_params_, quant_layers, uniform_pairs

WBITS, ABITS = (2, 3, 4, 8), (3, 4, 8)
#: batch 6: every activation tensor of the tiny model has < 16384 elements, so activation Omegas are exact sums
BATCH = 6


def _tiny_model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=1,
                             embed_dim=32, num_heads=2, num_classes=5).eval()


@pytest.fixture(scope="module")
def tiny():
    """(qmodel running at W4A4, its dopq table of every WBITS x ABITS pair (output search), images, labels)."""
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(12) % 5
    qmodel = wrapped_copy(_tiny_model())
    layers = quant_layers(qmodel)
    reference = uniform_pairs(layers, 4, 4, head_bits=None)
    reparameterize_for_(qmodel, images, method="dopq", reference=reference)
    plan = calibration_plan(qmodel, method="dopq", pairs={n: [(w, a) for w in WBITS for a in ABITS] for n in layers},
                            reference=reference, range_search="output")
    table = calibrate_table(qmodel, images, plan, settings=SearchSettings(images=12, matmul_images=12))
    load_params_(qmodel, table.select(reference))
    return qmodel, table, images, labels


@pytest.fixture(scope="module")
def with_labels(tiny):
    qmodel, table, images, labels = tiny
    return compute_sensitivity(qmodel, table, images, labels, type_aware=False, batch_size=BATCH)


def _float_copy(qmodel):
    model = copy.deepcopy(qmodel)
    load_params_(model, {})
    return model


def _brute_fisher(qmodel, images, labels, names):
    """Sum over images of the squared per-image cross-entropy weight gradients, one backward per image."""
    model = _float_copy(qmodel)
    layers = quant_layers(model)
    brute = {n: torch.zeros_like(layers[n].weight) for n in names}
    for i in range(len(images)):
        model.zero_grad()
        F.cross_entropy(model(images[i: i + 1]), labels[i: i + 1], reduction="sum").backward()
        for n in names:
            brute[n] += layers[n].weight.grad.pow(2)
    return brute


def test_per_image_weight_fisher_matches_brute_force(tiny):
    qmodel, _, images, labels = tiny
    names = ["blocks.0.attn.qkv", "blocks.0.mlp.fc2", "head", "patch_embed.proj"]
    brute = _brute_fisher(qmodel, images, labels, names)
    model = _float_copy(qmodel)
    layers = quant_layers(model)
    hooks = fisher_pass(model, layers, {}, images, labels, batch_size=BATCH, seed=0)
    for n in names:
        got = hooks.fisher[n].reshape(brute[n].shape)
        assert torch.allclose(got, brute[n], rtol=1e-3, atol=1e-9), n


def test_weight_omega_is_the_fisher_weighted_error_of_the_table_entry(tiny, with_labels):
    """Omega_w(l, w) = 1/2 sum F (Q(w) - w)^2 per image, Q = exactly the table's w-bit weight params."""
    qmodel, table, images, labels = tiny
    names = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "head", "patch_embed.proj"]
    brute = _brute_fisher(qmodel, images, labels, names)
    layers = quant_layers(qmodel)
    for name in names:
        w = layers[name].weight.detach()
        assert set(with_labels.weight[name]) == set(WBITS)
        for bits in WBITS:
            params = table.entry(name, (bits, 4)).weight
            expected = 0.5 * (brute[name] / len(images) * (quantize_weight(w, params) - w).pow(2)).sum().item()
            assert with_labels.weight[name][bits] == pytest.approx(expected, rel=2e-3), (name, bits)


def test_activation_omega_of_grouped_entries_matches_brute_force(tiny, with_labels):
    """Omega_a(l, a) = 1/2 E_x[sum_j (dL/dx_j)^2 (Q(x_j) - x_j)^2] with Q the table's a-bit input params as they run:
    per-position scales of qkv/fc1, per-head scales of q, k and v, TanQ on the post-softmax map."""
    qmodel, table, images, labels = tiny
    assert table.entry("blocks.0.attn.qkv", (4, 3)).inputs[0].granularity == "position"
    assert table.entry("blocks.0.attn.matmul_qk", (16, 3)).inputs[1].granularity == "head"
    model = _float_copy(qmodel)
    layers = quant_layers(model)
    names = ["blocks.0.attn.qkv", "blocks.0.attn.matmul_qk", "blocks.0.attn.matmul_av", "blocks.0.mlp.fc2", "head"]
    seen = {}

    def hook_for(name):
        def hook(_module, args):
            for x in args:
                x.retain_grad()
            seen[name] = args
        return hook

    handles = [layers[n].register_forward_pre_hook(hook_for(n)) for n in names]
    for p in model.parameters():
        p.requires_grad_(False)
    x = images.clone().requires_grad_(True)
    F.cross_entropy(model(x), labels, reduction="sum").backward()
    for handle in handles:
        handle.remove()
    for name in names:
        wbits = 4 if layers[name].has_weight else 16
        assert set(with_labels.act[name]) == set(ABITS)
        for bits in ABITS:
            entry = table.entry(name, (wbits, bits))
            expected = sum(0.5 * (t.grad.pow(2) * (fake_quant(t.detach(), p) - t.detach()).pow(2)).sum().item()
                           for t, p in zip(seen[name], entry.inputs)) / len(images)
            assert expected > 0
            assert with_labels.act[name][bits] == pytest.approx(expected, rel=1e-3), (name, bits)


def test_omega_decreases_with_bits_and_is_zero_at_float(with_labels):
    table = with_labels
    for name, per_bits in table.weight.items():
        if table.components[name].startswith("matmul"):
            assert per_bits == {}
            continue
        values = [per_bits[b] for b in WBITS]
        assert values[0] > values[1] > values[-1] >= 0, (name, values)
    for name, per_bits in table.act.items():
        assert per_bits[3] > per_bits[8] >= 0, name
    assert table.omega("blocks.0.attn.qkv", 16, 16) == 0.0
    assert table.omega("blocks.0.attn.qkv", 3, 16) == table.weight["blocks.0.attn.qkv"][3]
    assert table.omega("blocks.0.attn.qkv", 3, 4) == pytest.approx(
        table.weight["blocks.0.attn.qkv"][3] + table.act["blocks.0.attn.qkv"][4])
    assert table.loss == "cross_entropy"


def test_type_factors_match_measured_kl(tiny):
    qmodel, table, images, _ = tiny
    sens = compute_sensitivity(qmodel, table, images, None, type_aware=True, batch_size=BATCH, alpha_images=12)
    assert set(sens.type_factors) == {"patch_embed", "qkv", "matmul_qk", "matmul_av", "proj", "fc1", "fc2", "head"}
    # independent recomputation: only one component type at its (4, 4) entry, the KL to the float model with plain
    # torch, divided by the raw (unscaled) sum of the table's Omegas of its layers
    model = copy.deepcopy(qmodel)
    layers = quant_layers(model)
    load_params_(model, {})
    with torch.no_grad():
        float_logp = F.log_softmax(model(images[:12]), -1)
    for component, factor in sens.type_factors.items():
        members = [n for n, c in sens.components.items() if c == component]
        load_params_(model, {n: table.entry(n, (4 if layers[n].has_weight else 16, 4)) for n in members})
        with torch.no_grad():
            quant_logp = F.log_softmax(model(images[:12]), -1)
        measured = (float_logp.exp() * (float_logp - quant_logp)).sum(-1).mean().item()
        raw = sum(sens.weight[n].get(4, 0.0) + sens.act[n][4] for n in members)
        assert sens.measured_type_kl[component] == pytest.approx(measured, rel=1e-4, abs=1e-9), component
        expected = 1.0 if raw <= 1e-12 or measured <= 0 else min(max(measured / raw, 0.05), 20.0)
        assert factor == pytest.approx(expected, rel=1e-4), component
    assert len({round(f, 6) for f in sens.type_factors.values()}) > 1  # not all clamped to one value
    assert sens.loss == "kl"


def test_table_json_round_trip(with_labels):
    table = with_labels
    table.type_factors.update({"qkv": 2.0})
    table.layer_factors.update({"head": 0.5})
    again = SensitivityTable.from_dict(table.to_dict())
    for name in table.components:
        w = 3 if table.weight[name] else 16
        for aware in (True, False):
            assert again.omega(name, w, 4, type_aware=aware) == pytest.approx(table.omega(name, w, 4, type_aware=aware))
    assert again.omega("blocks.0.attn.qkv", 3, 4) != pytest.approx(again.omega("blocks.0.attn.qkv", 3, 4, False))
    assert again.omega("head", 3, 4, False) == pytest.approx(0.5 * (table.weight["head"][3] + table.act["head"][4]))
    table.type_factors.clear()
    table.layer_factors.clear()


def test_sensitivity_leaves_model_state_unchanged(tiny):
    qmodel, table, images, labels = tiny
    before = {n: layer.params for n, layer in quant_layers(qmodel).items()}
    with torch.no_grad():
        out_before = qmodel(images)
    head_weight = quant_layers(qmodel)["head"].weight
    head_weight.requires_grad_(False)  # a mix of flags, each restored
    flags = [p.requires_grad for p in qmodel.parameters()]
    assert any(flags) and not all(flags)
    compute_sensitivity(qmodel, table, images, labels, batch_size=12, alpha_images=6)
    assert all(layer.params is before[n] for n, layer in quant_layers(qmodel).items())
    with torch.no_grad():
        assert torch.equal(qmodel(images), out_before)
    assert all(p.grad is None for p in qmodel.parameters())
    assert [p.requires_grad for p in qmodel.parameters()] == flags
    head_weight.requires_grad_(True)


def test_runtime_target_omegas_are_keyed_by_form():
    """onnxruntime-cpu: one Omega per computed form (fp32 costs nothing); ``omega(layer, w, a)`` reads the form of
    that key; the dynamic int8 input of w4a8 costs something, a float input nothing."""
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    qmodel = wrapped_copy(_tiny_model(), target="onnxruntime-cpu", block_size=16)
    layers = quant_layers(qmodel)
    reference = uniform_pairs(layers, 8, 8, head_bits=None)
    pairs = {n: [(f.wbits, f.abits) for f in forms_for("onnxruntime-cpu", layer.component)]
             for n, layer in layers.items()}
    plan = calibration_plan(qmodel, method="minmax", pairs=pairs, reference=reference)
    table = calibrate_table(qmodel, images, plan)
    load_params_(qmodel, table.select(reference))
    sens = compute_sensitivity(qmodel, table, images, None, type_aware=False, batch_size=BATCH)
    assert sens.target == "onnxruntime-cpu" and sens.block_size == 16
    for name, layer in layers.items():
        forms = {f.name for f in forms_for("onnxruntime-cpu", layer.component)}
        assert set(sens.form_weight[name]) == set(sens.form_act[name]) == forms
        assert sens.form_weight[name]["fp32"] == sens.form_act[name]["fp32"] == 0.0
        assert sens.omega(name, 16, 16) == 0.0
        int8 = (8, 8) if layer.has_weight else (16, 8)
        assert sens.omega(name, *int8) == pytest.approx(sens.form_weight[name]["int8"] + sens.form_act[name]["int8"])
        assert sens.form_act[name]["int8"] > 0
        if layer.has_weight and layer.component != "patch_embed":
            assert sens.form_act[name]["w4"] == sens.form_act[name]["w8"] == 0.0  # float inputs
            assert sens.form_act[name]["w4a8"] > 0  # dynamic int8 blocks
            assert sens.form_weight[name]["w4"] > sens.form_weight[name]["w8"] > 0
            assert sens.form_weight[name]["w4a8"] == pytest.approx(sens.form_weight[name]["w4"])  # same 4-bit grid
