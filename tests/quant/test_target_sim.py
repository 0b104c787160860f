"""Torch simulation of the onnxruntime-cpu forms: each form's params (symmetric int8 per channel, block w4/w8,
dynamic int8 blocks for w4a8) against an independent re-implementation and against onnxruntime's own kernels, the
table entries of every form, and target-mode sensitivity."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from quant.calibration import calibrate_table
from quant.modules import QuantLinear
from quant.ptq import calibration_plan, reparameterize_for_, wrapped_copy
from quant.quantizers import (
    AffineParams,
    DynamicParams,
    LayerParams,
    fake_quant,
    fake_quant_weight,
    fit_uniform,
    fit_weight,
    params_equal,
    weight_codes,
)
from quant.quantizers.uniform import dynamic_block_quant
from quant.quantizers.weight import padded_block_codes
from quant.sensitivity import SensitivityTable, compute_sensitivity
from quant.target import FormError, forms_for
from quant.wrap import forms_of, load_params_, quant_layers, uniform_pairs, wrap_model_

torch.set_num_threads(1)
ORT = "onnxruntime-cpu"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- independent numpy references ------------------------------------------------------------------------------
def np_block_fake_quant(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Asymmetric block quantization along K, zero padding, crop (scale/zero: [out, n_blocks])."""
    out, k = w.shape
    nb = -(-k // block)
    padded = np.zeros((out, nb * block), np.float32)
    padded[:, :k] = w
    blocks = padded.reshape(out, nb, block)
    s, z = scale[:, :, None].astype(np.float32), zero[:, :, None].astype(np.float32)
    q = np.clip(np.round(blocks / s) + z, 0, 2**bits - 1)
    return ((q - z) * s).reshape(out, -1)[:, :k]


def np_dynamic_block(x: np.ndarray, block: int) -> np.ndarray:
    """int8 symmetric per row and K-block, float32 throughout (MatMulNBits accuracy_level 4)."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.float32)
    k = rows.shape[1]
    nb = -(-k // block)
    padded = np.zeros((rows.shape[0], nb * block), np.float32)
    padded[:, :k] = rows
    out = np.zeros_like(padded)
    for r in range(padded.shape[0]):
        for b in range(nb):
            seg = padded[r, b * block:(b + 1) * block]
            scale = np.float32(np.abs(seg).max()) / np.float32(127.0)
            inv = np.float32(0.0) if scale == 0 else np.float32(1.0) / scale
            q = np.clip(np.round(seg * inv), -128, 127)  # np.round: half to even, like onnxruntime
            out[r, b * block:(b + 1) * block] = q * scale
    return out[:, :k].reshape(x.shape)


# ---- params of each form ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [64, 40, 100], ids=lambda k: f"K{k}")
def test_block_weight_matches_numpy(bits, k):
    w = torch.randn(24, k, generator=_gen(k)) * torch.rand(24, 1, generator=_gen(1))
    params = fit_weight(w, bits, layout="block", block_size=32)
    nb = -(-k // 32)
    assert (params.layout, params.block_size, params.bits) == ("block", 32, bits)
    assert tuple(params.scale.shape) == (24, nb, 1) and tuple(params.zero_point.shape) == (24, nb, 1)
    zero = params.zero_point.squeeze(-1).numpy()
    assert np.array_equal(zero, np.round(zero)) and zero.min() >= 0 and zero.max() <= 2**bits - 1
    expected = np_block_fake_quant(w.numpy(), params.scale.squeeze(-1).numpy(), zero, bits, 32)
    got = fake_quant_weight(w, params)
    assert got.shape == w.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    codes = padded_block_codes(w, params)
    assert codes.shape == (24, nb, 32) and int(codes.max()) <= 2**bits - 1 and int(codes.min()) >= 0
    # padding codes dequantize to exactly 0; weight_codes is the unpadded code matrix
    pad_deq = (codes - params.zero_point) * params.scale
    assert torch.all(pad_deq.reshape(24, -1)[:, k:] == 0)
    assert torch.equal(weight_codes(w, params), codes.reshape(24, -1)[:, :k])
    # the block search is at least as good as plain per-block min/max
    mm = fit_weight(w, bits, layout="block", block_size=32, minmax=True)
    assert (got - w).pow(2).sum() <= (fake_quant_weight(w, mm) - w).pow(2).sum() * (1 + 1e-6)


def test_block_weight_beats_per_channel_at_4_bits():
    w = torch.randn(32, 256, generator=_gen(3)) * torch.linspace(0.1, 3, 256)  # ranges vary along K
    block, channel = fit_weight(w, 4, layout="block", block_size=32), fit_weight(w, 4)
    assert (fake_quant_weight(w, block) - w).pow(2).mean() < 0.7 * (fake_quant_weight(w, channel) - w).pow(2).mean()


@pytest.mark.parametrize("shape", [(16, 48), (8, 3, 4, 4)], ids=["linear", "conv"])
def test_symmetric_weight_codes_are_int8(shape):
    w = torch.randn(*shape, generator=_gen(4))
    w[0] *= 0  # an all-zero channel still gets a positive scale
    params = fit_weight(w, 8, layout="symmetric")
    assert params.symmetric and params.block_size is None
    assert torch.all(params.zero_point == 128)
    assert torch.all(params.scale > 0)
    signed = weight_codes(w, params) - 128
    assert int(signed.min()) >= -128 and int(signed.max()) <= 127
    # int8 symmetric reference: q = clamp(round(w / s), -128, 127), w_hat = q * s
    s = params.scale
    expected = torch.clamp(torch.round(w / s), -128, 127) * s
    assert torch.allclose(fake_quant_weight(w, params), expected, rtol=0, atol=1e-7)
    # the chosen scale is a shrink of max|w| / 127 (plain max|w| / 127 with minmax)
    amax = w.reshape(shape[0], -1).abs().amax(1)
    ratio = (s.reshape(-1)[1:] * 127 / amax[1:])
    assert torch.all(ratio <= 1 + 1e-6) and torch.all(ratio >= 0.5 - 1e-6)
    mm = fit_weight(w, 8, layout="symmetric", minmax=True)
    assert torch.allclose(mm.scale.reshape(-1)[1:], amax[1:] / 127)


@pytest.mark.parametrize("k", [64, 72], ids=lambda k: f"K{k}")
def test_dynamic_block_matches_numpy(k):
    x = torch.randn(2, 5, k, generator=_gen(k)) * 3
    x[0, 0, :32] = 0  # an all-zero block: scale 0, inverse 0, result 0
    got = dynamic_block_quant(x, 32)
    np.testing.assert_array_equal(got.numpy(), np_dynamic_block(x.numpy(), 32))
    assert torch.all(got[0, 0, :32] == 0)
    # the w4a8 input params compute exactly this
    assert torch.equal(fake_quant(x, DynamicParams(8, "block", 32)), got)


def test_dynamic_block_params_are_int8_blocks():
    with pytest.raises(ValueError, match="int8 with a block_size"):
        DynamicParams(4, "block", 32)
    with pytest.raises(ValueError, match="int8 with a block_size"):
        DynamicParams(8, "block")
    rows = torch.randn(3, 64, generator=_gen(6))
    token = fake_quant(rows, DynamicParams(8, "token"))
    assert not torch.equal(token, fake_quant(rows, DynamicParams(8, "block", 32)))  # two different modes


# ---- layers and models ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit():
    """(float model, its wrapped copy for onnxruntime-cpu running at int8, a table with every form of every layer,
    images)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=1,
                              embed_dim=48, num_heads=2, num_classes=5).eval()
    images = torch.randn(12, 3, 16, 16, generator=_gen(1))
    qmodel = wrapped_copy(model, target=ORT, block_size=16)
    layers = quant_layers(qmodel)
    reference = uniform_pairs(layers, 8, 8)
    reparameterize_for_(qmodel, images, method="dopq", reference=reference)
    pairs = {n: [(f.wbits, f.abits) for f in forms_for(ORT, layer.component)] for n, layer in layers.items()}
    plan = calibration_plan(qmodel, method="dopq", pairs=pairs, reference=reference)
    table = calibrate_table(qmodel, images, plan)
    load_params_(qmodel, table.select(reference))
    return model, qmodel, table, images


def test_target_table_uses_plain_uniform_softmax_and_per_tensor_ranges(vit):
    _, qmodel, table, _ = vit
    layers = quant_layers(qmodel)
    assert set(forms_of(qmodel).values()) == {"int8"}
    for name, layer in layers.items():
        assert layer.target == ORT and layer.block_size == 16
        for pair in table.pairs(name):
            entry = table.entry(name, pair)
            for params in entry.inputs:
                if params is None or isinstance(params, DynamicParams):
                    continue
                assert type(params) is AffineParams, name  # no TanQ/log2 post-softmax map on a runtime target
                assert params.granularity == "tensor" and params.scale.numel() == 1, name
                zero = float(params.zero_point)
                assert zero == round(zero) and 0 <= zero <= 255, name  # a uint8 zero point
        if layer.has_weight:
            assert layer.params.weight.symmetric and torch.all(layer.params.weight.zero_point == 128)


def test_each_forms_table_entry(vit):
    """Loading the entries of fc1's forms in turn (twice) always gives the layer exactly that entry, with the
    form's params: int8 = symmetric 8-bit weights and a static uint8 input grid, w8/w4/w4a8 = block weights (w4
    and w4a8 share one record), w4a8 = the dynamic int8 input blocks, fp32 = nothing quantized."""
    _, qmodel, table, _ = vit
    model = copy.deepcopy(qmodel)
    fc1 = quant_layers(model)["blocks.0.mlp.fc1"]
    for pair in ((8, 8), (4, 8), (4, 16), (8, 16), (16, 16)) * 2:
        entry = table.entry("blocks.0.mlp.fc1", pair)
        load_params_(model, {"blocks.0.mlp.fc1": entry}, rest_float=False)
        assert params_equal(fc1.params, entry)
        weight, act = fc1.params.weight, fc1.params.inputs[0]
        name = fc1.form.name
        assert (fc1.wbits, fc1.abits) == pair
        if name == "int8":
            assert weight.symmetric and weight.bits == 8 and isinstance(act, AffineParams) and act.bits == 8
        elif name in ("w8", "w4", "w4a8"):
            assert (weight.layout, weight.block_size, weight.bits) == ("block", 16, 8 if name == "w8" else 4)
            assert tuple(weight.scale.shape) == (fc1.out_features, fc1.in_features // 16, 1)
            if name == "w4a8":
                assert isinstance(act, DynamicParams) and (act.granularity, act.block_size) == ("block", 16)
            else:
                assert act is None
        else:
            assert weight is None and act is None
    assert params_equal(table.entry("blocks.0.mlp.fc1", (4, 16)).weight, table.entry("blocks.0.mlp.fc1", (4, 8)).weight)
    layers = quant_layers(model)
    with pytest.raises(FormError, match="its forms are"):
        calibration_plan(model, method="dopq", pairs={"blocks.0.mlp.fc1": [(4, 4)]},
                         reference=uniform_pairs(layers, 8, 8))
    with pytest.raises(FormError):
        calibration_plan(model, method="dopq", pairs={"patch_embed.proj": [(4, 16)]},
                         reference=uniform_pairs(layers, 8, 8))
    matmul = layers["blocks.0.attn.matmul_qk"]
    matmul.load_params(LayerParams.float(2))
    assert matmul.form.name == "fp32"


def test_every_form_runs_and_float_form_is_exact(vit):
    model, qmodel, table, images = vit
    qmodel = copy.deepcopy(qmodel)
    layers = quant_layers(qmodel)
    with torch.no_grad():
        reference = model(images)
        errors = {}
        for wbits, abits in ((16, 16), (8, 8), (8, 16), (4, 16), (4, 8)):
            assignment = uniform_pairs(layers, wbits, abits, head_bits=8)
            load_params_(qmodel, table.select(assignment))
            errors[(wbits, abits)] = (qmodel(images) - reference).pow(2).mean().item()
    # fp32 inner layers: only the int8 patch embedding and head remain quantized
    assert errors[(16, 16)] < errors[(4, 16)]
    assert errors[(8, 16)] < errors[(4, 16)]
    assert all(math.isfinite(e) and e > 0 for e in errors.values())


def test_target_wrap_rejects_bad_arguments():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, depth=1,
                              embed_dim=16, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="target must be one of"):
        wrap_model_(copy.deepcopy(model), target="tensorrt")
    with pytest.raises(ValueError, match="power of two"):
        wrap_model_(copy.deepcopy(model), target=ORT, block_size=24)


def test_target_sensitivity_per_form(vit):
    _, qmodel, table, images = vit
    before = {n: layer.params for n, layer in quant_layers(qmodel).items()}
    sens = compute_sensitivity(qmodel, table, images, None, batch_size=6, alpha_images=12, reference_bits=(8, 8))
    assert all(params_equal(layer.params, before[n]) for n, layer in quant_layers(qmodel).items())
    assert sens.target == ORT and sens.block_size == 16
    w4_over_w8 = []
    for name, component in sens.components.items():
        names = {f.name for f in forms_for(ORT, component)}
        assert set(sens.form_weight[name]) == names == set(sens.form_act[name])
        for form in forms_for(ORT, component):
            value = sens.omega(name, form.wbits, form.abits, type_aware=False)
            assert math.isfinite(value) and value >= 0, (name, form.name)
        assert sens.form_weight[name]["fp32"] == 0 and sens.form_act[name]["fp32"] == 0
        if "w4" in names:
            assert sens.form_act[name]["w4"] == 0 and sens.form_act[name]["w8"] == 0
            assert sens.form_act[name]["w4a8"] > 0 and sens.form_act[name]["int8"] > 0
            assert sens.form_weight[name]["w4"] == sens.form_weight[name]["w4a8"] > 0
            w4_over_w8.append(sens.form_weight[name]["w4"] / max(sens.form_weight[name]["w8"], 1e-30))
    assert np.mean(w4_over_w8) > 10  # 4 bits: ~16x the squared error of 8 bits
    assert set(sens.type_factors) == set(sens.components.values())
    assert all(0.05 <= f <= 20 for f in sens.type_factors.values())
    again = SensitivityTable.from_dict(sens.to_dict())
    for name, component in sens.components.items():
        for form in forms_for(ORT, component):
            assert again.omega(name, form.wbits, form.abits) == sens.omega(name, form.wbits, form.abits)
    with pytest.raises(FormError):
        sens.omega("blocks.0.mlp.fc1", 4, 4)


def test_target_sensitivity_scores_the_tables_forms(vit):
    """The sensitivity scores exactly the forms the table holds (a job restricted to fp32 and w4)."""
    _, qmodel, table, images = vit
    kept = {n: {p: e for p, e in table.entries[n].items() if p in ((16, 16), (4, 16))} for n in table.layers()}
    restricted = type(table)(kept)
    sens = compute_sensitivity(qmodel, restricted, images[:6], None, batch_size=6, type_aware=False)
    assert set(sens.form_weight["blocks.0.mlp.fc1"]) == {"fp32", "w4"}
    assert set(sens.form_weight["patch_embed.proj"]) == {"fp32"}
    assert sens.omega("blocks.0.mlp.fc1", 8, 8) == 0.0  # not computed
    assert sens.omega("blocks.0.mlp.fc1", 4, 16) > 0


def test_sim_table_json_has_no_target_keys():
    table = SensitivityTable(components={"a": "fc1"}, weight={"a": {4: 1.0}}, act={"a": {4: 2.0}})
    data = table.to_dict()
    assert "target" not in data and "form_weight" not in data
    assert SensitivityTable.from_dict(data).omega("a", 4, 4) == 3.0


# ---- against onnxruntime ----------------------------------------------------------------------------------------
def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Rows of codes (last dim) packed as MatMulNBits wants: 8 bits as is, 4 bits low nibble first."""
    codes = codes.astype(np.uint8)
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _matmulnbits_session(layer: QuantLinear, accuracy_level: int):
    from onnx import TensorProto, helper, numpy_helper

    from quant.deploy.onnxruntime_cpu.runtime import make_session

    params = layer.params.weight
    bits, block = params.bits, params.block_size
    n, k = layer.out_features, layer.in_features
    codes = padded_block_codes(layer.weight.detach(), params).numpy()  # [N, n_blocks, block]
    nb = codes.shape[1]
    b = _pack(codes, bits)  # [N, n_blocks, blob]
    scales = params.scale.detach().reshape(-1).numpy().astype(np.float32)
    zeros = _pack(params.zero_point.detach().reshape(n, nb).numpy(), bits).reshape(-1)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales"),
             numpy_helper.from_array(zeros, "zp"),
             numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), "bias")]
    nodes = [helper.make_node("MatMulNBits", ["x", "B", "scales", "zp"], ["mm"], domain="com.microsoft", K=k, N=n,
                              bits=bits, block_size=block, accuracy_level=accuracy_level),
             helper.make_node("Add", ["mm", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return make_session(model)


@pytest.mark.parametrize(("wbits", "abits", "level"), [(4, 8, 4), (4, 16, 0), (8, 16, 0)],
                         ids=["w4a8", "w4", "w8"])
@pytest.mark.parametrize("k", [128, 96], ids=lambda k: f"K{k}")
def test_block_forms_match_onnxruntime_matmulnbits(wbits, abits, level, k):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    block = 64 if k == 96 else 32  # K=96 with blocks of 64: a padded block
    layer = QuantLinear(nn.Linear(k, 80), "fc1", target=ORT, block_size=block)
    x = torch.randn(37, k, generator=_gen(9)) * 2
    weight = fit_weight(layer.weight, wbits, layout="block", block_size=block)
    layer.load_params(LayerParams(weight, (DynamicParams(8, "block", block) if abits == 8 else None,)))
    assert layer.form.accuracy_level == level and (layer.wbits, layer.abits) == (wbits, abits)
    with torch.no_grad():
        expected = layer(x).numpy()
    got = _matmulnbits_session(layer, level).run(None, {"x": x.numpy()})[0]
    err = np.abs(got - expected).max() / np.abs(expected).max()
    assert err < 1e-4, err
    if abits == 8:  # and the dynamic input quantization matters: without it the error is much larger
        with torch.no_grad():
            no_act = torch.nn.functional.linear(x, layer.quantized_weight(), layer.bias).numpy()
        assert np.abs(got - no_act).max() / np.abs(expected).max() > 10 * err


def test_int8_form_matches_onnxruntime_qdq():
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from quant.deploy.onnxruntime_cpu.runtime import make_session

    torch.manual_seed(0)
    k, n = 96, 64
    layer = QuantLinear(nn.Linear(k, n), "fc1", target=ORT)
    x = torch.randn(29, k, generator=_gen(10)) + 0.5
    act = fit_uniform(x.reshape(-1), 8, include_zero=True)
    weight = fit_weight(layer.weight, 8, layout="symmetric")
    layer.load_params(LayerParams(weight, (act,)))
    assert layer.form.name == "int8"
    w_int8 = (weight_codes(layer.weight.detach(), weight) - 128).to(torch.int8).T.contiguous().numpy()  # [K, N]
    inits = [
        numpy_helper.from_array(np.array(float(act.scale), np.float32), "s_a"),
        numpy_helper.from_array(np.array(int(act.zero_point), np.uint8), "z_a"),
        numpy_helper.from_array(w_int8, "w_q"),
        numpy_helper.from_array(weight.scale.detach().reshape(-1).numpy().astype(np.float32), "s_w"),
        numpy_helper.from_array(np.zeros(n, np.int8), "z_w"),
        numpy_helper.from_array(layer.bias.detach().numpy(), "bias"),
    ]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_a", "z_a"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_a", "z_a"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "s_w", "z_w"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"]),
             helper.make_node("Add", ["mm", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    got = make_session(model).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        expected = layer(x).numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
