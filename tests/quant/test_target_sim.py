"""Torch simulation of the onnxruntime-cpu forms: each form's fake quantization against an independent
re-implementation, form switching keeps every form's ranges, target-mode sensitivity, and the w4/w4a8/w8 forms
against onnxruntime's own ``MatMulNBits`` kernel."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from quant.modules import QuantLinear
from quant.ptq import quantize_ptq
from quant.quantizers import UniformQuantizer, WeightQuantizer
from quant.quantizers.uniform import dynamic_block_quant
from quant.sensitivity import SensitivityTable, compute_sensitivity
from quant.target import FormError, forms_for
from quant.wrap import quant_layers, set_bits_, wrap_model_

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


# ---- quantizer state --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [64, 40, 100], ids=lambda k: f"K{k}")
def test_block_weight_matches_numpy(bits, k):
    w = torch.randn(24, k, generator=_gen(k)) * torch.rand(24, 1, generator=_gen(1))
    q = WeightQuantizer(bits, block_size=32)
    q.calibrate(w)
    nb = -(-k // 32)
    assert tuple(q.scale.shape) == (24, nb, 1) and tuple(q.zero_point.shape) == (24, nb, 1)
    zero = q.zero_point.squeeze(-1).numpy()
    assert np.array_equal(zero, np.round(zero)) and zero.min() >= 0 and zero.max() <= 2**bits - 1
    expected = np_block_fake_quant(w.numpy(), q.scale.squeeze(-1).numpy(), zero, bits, 32)
    got = q(w)
    assert got.shape == w.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    codes = q.block_codes(w)
    assert codes.shape == (24, nb, 32) and int(codes.max()) <= 2**bits - 1 and int(codes.min()) >= 0
    # padding codes dequantize to exactly 0; integer_weight is the unpadded code matrix
    pad_deq = (codes - q.zero_point) * q.scale
    assert torch.all(pad_deq.reshape(24, -1)[:, k:] == 0)
    assert torch.equal(q.integer_weight(w), codes.reshape(24, -1)[:, :k])
    # the block search is at least as good as plain per-block min/max
    mm = WeightQuantizer(bits, block_size=32, minmax=True)
    mm.calibrate(w)
    assert (q(w) - w).pow(2).sum() <= (mm(w) - w).pow(2).sum() * (1 + 1e-6)


def test_block_weight_beats_per_channel_at_4_bits():
    w = torch.randn(32, 256, generator=_gen(3)) * torch.linspace(0.1, 3, 256)  # ranges vary along K
    block, channel = WeightQuantizer(4, block_size=32), WeightQuantizer(4)
    block.calibrate(w)
    channel.calibrate(w)
    assert (block(w) - w).pow(2).mean() < 0.7 * (channel(w) - w).pow(2).mean()


@pytest.mark.parametrize("shape", [(16, 48), (8, 3, 4, 4)], ids=["linear", "conv"])
def test_symmetric_weight_codes_are_int8(shape):
    w = torch.randn(*shape, generator=_gen(4))
    w[0] *= 0  # an all-zero channel still gets a positive scale
    q = WeightQuantizer(8, symmetric=True)
    q.calibrate(w)
    assert torch.all(q.zero_point == 128)
    assert torch.all(q.scale > 0)
    signed = q.integer_weight(w) - 128
    assert int(signed.min()) >= -128 and int(signed.max()) <= 127
    # int8 symmetric reference: q = clamp(round(w / s), -128, 127), w_hat = q * s
    s = q.scale
    expected = torch.clamp(torch.round(w / s), -128, 127) * s
    assert torch.allclose(q(w), expected, rtol=0, atol=1e-7)
    # the chosen scale is a shrink of max|w| / 127 (plain max|w| / 127 with minmax)
    amax = w.reshape(shape[0], -1).abs().amax(1)
    ratio = (s.reshape(-1)[1:] * 127 / amax[1:])
    assert torch.all(ratio <= 1 + 1e-6) and torch.all(ratio >= 0.5 - 1e-6)
    mm = WeightQuantizer(8, symmetric=True, minmax=True)
    mm.calibrate(w)
    assert torch.allclose(mm.scale.reshape(-1)[1:], amax[1:] / 127)


@pytest.mark.parametrize("k", [64, 72], ids=lambda k: f"K{k}")
def test_dynamic_block_matches_numpy(k):
    x = torch.randn(2, 5, k, generator=_gen(k)) * 3
    x[0, 0, :32] = 0  # an all-zero block: scale 0, inverse 0, result 0
    got = dynamic_block_quant(x, 32)
    np.testing.assert_array_equal(got.numpy(), np_dynamic_block(x.numpy(), 32))
    assert torch.all(got[0, 0, :32] == 0)


def test_dynamic_block_quantizer_keeps_static_range():
    x = torch.randn(4000, generator=_gen(5))
    q = UniformQuantizer(8)
    q.observing = True
    q(x)
    q.observing = False
    q.finalize()
    static = (q.scale.clone(), q.zero_point.clone())
    rows = torch.randn(3, 64, generator=_gen(6))
    q.dynamic_block = 32
    assert torch.equal(q(rows), dynamic_block_quant(rows, 32))
    q.set_bits(4)
    with pytest.raises(ValueError, match="int8"):
        q(rows)
    q.set_bits(8)
    q.dynamic_block = None
    assert torch.equal(q.scale, static[0]) and torch.equal(q.zero_point, static[1])
    # quantize_at with an explicit mode leaves the quantizer as it was
    assert torch.equal(q.quantize_at(rows, 8, dynamic_block=32), dynamic_block_quant(rows, 32))
    assert q.dynamic_block is None


def test_weight_fitted_state_is_cached_per_layout():
    w = torch.randn(16, 96, generator=_gen(7))
    q = WeightQuantizer(8, symmetric=True)
    q.calibrate(w)
    custom = q.scale * 0.9  # as if an output-aware search had set it
    q.set_params(custom, q.zero_point)
    q.remember_fit()
    out_int8 = q(w).clone()
    for block, sym, bits in ((32, False, 4), (32, False, 8), (None, False, 8), (None, True, 8)):
        q.bits, q.block_size, q.symmetric = bits, block, sym
        q.calibrate(w)
    assert torch.equal(q.scale, custom) and torch.equal(q(w), out_int8)
    assert q.quantize_at(w, 4, block_size=32, symmetric=False).shape == w.shape
    assert q.block_size is None and q.symmetric and q.bits == 8 and torch.equal(q.scale, custom)


# ---- layers and models ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=1,
                              embed_dim=48, num_heads=2, num_classes=5).eval()
    images = torch.randn(12, 3, 16, 16, generator=_gen(1))
    qmodel, _ = quantize_ptq(model, images, method="dopq", wbits=8, abits=8, head_bits=8, target=ORT,
                             block_size=16)
    return model, qmodel, images


def test_target_wrap_uses_plain_uniform_softmax_and_per_tensor_ranges(vit):
    _, qmodel, _ = vit
    layers = quant_layers(qmodel)
    assert {layer.form.name for layer in layers.values()} == {"int8"}
    for name, layer in layers.items():
        assert layer.target == ORT and layer.block_size == 16
        for quantizer in layer.activation_quantizers():
            assert type(quantizer) is UniformQuantizer, name
            assert quantizer.granularity == "tensor" and quantizer.scale.numel() == 1, name
            zero = float(quantizer.zero_point)
            assert zero == round(zero) and 0 <= zero <= 255, name  # a uint8 zero point
        if layer.has_weight:
            assert layer.weight_quantizer.symmetric and torch.all(layer.weight_quantizer.zero_point == 128)


def test_form_switching_restores_each_forms_ranges(vit):
    _, qmodel, _images = vit
    model = copy.deepcopy(qmodel)
    fc1 = quant_layers(model)["blocks.0.mlp.fc1"]
    seen = {}
    for wbits, abits in ((8, 8), (4, 8), (4, 16), (8, 16), (16, 16)) * 2:
        fc1.set_bits(wbits, abits)
        state = (fc1.weight_quantizer.scale.detach().clone(), fc1.input_quantizer.scale.detach().clone(),
                 fc1.input_quantizer.zero_point.clone())
        name = fc1.form.name
        if name in seen:
            assert all(torch.equal(a, b) for a, b in zip(seen[name], state, strict=True)), name
        seen[name] = state
        wq, aq = fc1.weight_quantizer, fc1.input_quantizer
        if name == "int8":
            assert wq.symmetric and wq.block_size is None and aq.active and aq.dynamic_block is None
        elif name in ("w8", "w4", "w4a8"):
            assert wq.block_size == 16 and not wq.symmetric and wq.bits == (8 if name == "w8" else 4)
            assert tuple(wq.scale.shape) == (fc1.out_features, fc1.in_features // 16, 1)
            assert aq.active == (name == "w4a8") and aq.dynamic_block == (16 if name == "w4a8" else None)
        else:
            assert not wq.active and not aq.active
    with pytest.raises(FormError, match="its forms are"):
        fc1.set_bits(4, 4)
    with pytest.raises(FormError):
        quant_layers(model)["patch_embed.proj"].set_bits(4, 16)
    quant_layers(model)["blocks.0.attn.matmul_qk"].set_bits(16, 16)
    assert quant_layers(model)["blocks.0.attn.matmul_qk"].form.name == "fp32"


def test_every_form_runs_and_float_form_is_exact(vit):
    model, qmodel, images = vit
    qmodel = copy.deepcopy(qmodel)
    with torch.no_grad():
        reference = model(images)
        errors = {}
        for wbits, abits in ((16, 16), (8, 8), (8, 16), (4, 16), (4, 8)):
            set_bits_(qmodel, {n: (wbits, abits) for n, layer in quant_layers(qmodel).items()
                               if layer.component not in ("patch_embed", "head")})
            errors[(wbits, abits)] = (qmodel(images) - reference).pow(2).mean().item()
    # fp32 inner layers: only the int8 patch embedding and head remain quantized
    assert errors[(16, 16)] < errors[(4, 16)]
    assert errors[(8, 16)] < errors[(4, 16)]
    assert all(math.isfinite(e) for e in errors.values())


def test_target_wrap_rejects_bad_arguments():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, depth=1,
                              embed_dim=16, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="target must be one of"):
        wrap_model_(copy.deepcopy(model), target="tensorrt")
    with pytest.raises(ValueError, match="power of two"):
        wrap_model_(copy.deepcopy(model), target=ORT, block_size=24)


def test_target_sensitivity_per_form(vit):
    _, qmodel, images = vit
    before = {n: (l.wbits, l.abits) for n, l in quant_layers(qmodel).items()}
    table = compute_sensitivity(qmodel, images, None, batch_size=6, alpha_images=12, reference_bits=(8, 8))
    assert {n: (l.wbits, l.abits) for n, l in quant_layers(qmodel).items()} == before
    assert table.target == ORT and table.block_size == 16
    w4_over_w8 = []
    for name, component in table.components.items():
        names = {f.name for f in forms_for(ORT, component)}
        assert set(table.form_weight[name]) == names == set(table.form_act[name])
        for form in forms_for(ORT, component):
            value = table.omega(name, form.wbits, form.abits, type_aware=False)
            assert math.isfinite(value) and value >= 0, (name, form.name)
        assert table.form_weight[name]["fp32"] == 0 and table.form_act[name]["fp32"] == 0
        if "w4" in names:
            assert table.form_act[name]["w4"] == 0 and table.form_act[name]["w8"] == 0
            assert table.form_act[name]["w4a8"] > 0 and table.form_act[name]["int8"] > 0
            assert table.form_weight[name]["w4"] == table.form_weight[name]["w4a8"] > 0
            w4_over_w8.append(table.form_weight[name]["w4"] / max(table.form_weight[name]["w8"], 1e-30))
    assert np.mean(w4_over_w8) > 10  # 4 bits: ~16x the squared error of 8 bits
    assert set(table.type_factors) == set(table.components.values())
    assert all(0.05 <= f <= 20 for f in table.type_factors.values())
    again = SensitivityTable.from_dict(table.to_dict())
    for name, component in table.components.items():
        for form in forms_for(ORT, component):
            assert again.omega(name, form.wbits, form.abits) == table.omega(name, form.wbits, form.abits)
    with pytest.raises(FormError):
        table.omega("blocks.0.mlp.fc1", 4, 4)


def test_target_sensitivity_respects_forms(vit):
    _, qmodel, images = vit
    table = compute_sensitivity(qmodel, images[:6], None, batch_size=6, type_aware=False, forms=("fp32", "w4"))
    assert set(table.form_weight["blocks.0.mlp.fc1"]) == {"fp32", "w4"}
    assert set(table.form_weight["patch_embed.proj"]) == {"fp32"}
    assert table.omega("blocks.0.mlp.fc1", 8, 8) == 0.0  # not computed


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

    from quant.target.runtime import make_session

    wq = layer.weight_quantizer
    bits, block = wq.bits, wq.block_size
    n, k = layer.out_features, layer.in_features
    codes = wq.block_codes(layer.weight.detach()).squeeze(-1).numpy()  # [N, n_blocks, block]
    nb = codes.shape[1]
    b = _pack(codes, bits)  # [N, n_blocks, blob]
    scales = wq.scale.detach().reshape(-1).numpy().astype(np.float32)
    zeros = _pack(wq.zero_point.detach().reshape(n, nb).numpy(), bits).reshape(-1)
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
    layer = QuantLinear(nn.Linear(k, 80), "fc1")
    layer.target, layer.block_size = ORT, 64 if k == 96 else 32  # K=96 with blocks of 64: a padded block
    layer.input_quantizer.include_zero = True
    x = torch.randn(37, k, generator=_gen(9)) * 2
    layer.input_quantizer.observing = True
    layer(x)
    layer.input_quantizer.observing = False
    layer.input_quantizer.finalize()
    layer.weight_quantizer.calibrate(layer.weight)
    layer.set_bits(wbits, abits)
    assert layer.form.accuracy_level == level
    with torch.no_grad():
        expected = layer(x).numpy()
    got = _matmulnbits_session(layer, level).run(None, {"x": x.numpy()})[0]
    err = np.abs(got - expected).max() / np.abs(expected).max()
    assert err < 1e-4, err
    if abits == 8:  # and the dynamic input quantization matters: without it the error is much larger
        with torch.no_grad():
            no_act = torch.nn.functional.linear(x, layer.weight_quantizer(layer.weight), layer.bias).numpy()
        assert np.abs(got - no_act).max() / np.abs(expected).max() > 10 * err


def test_int8_form_matches_onnxruntime_qdq():
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from quant.target.runtime import make_session

    torch.manual_seed(0)
    k, n = 96, 64
    layer = QuantLinear(nn.Linear(k, n), "fc1")
    layer.target = ORT
    layer.input_quantizer.include_zero = True
    x = torch.randn(29, k, generator=_gen(10)) + 0.5
    layer.input_quantizer.observing = True
    layer(x)
    layer.input_quantizer.observing = False
    layer.input_quantizer.finalize()
    layer.set_bits(8, 8)
    layer.weight_quantizer.calibrate(layer.weight)
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    w_int8 = (wq.integer_weight(layer.weight.detach()) - 128).to(torch.int8).T.contiguous().numpy()  # [K, N]
    inits = [
        numpy_helper.from_array(np.array(float(aq.scale), np.float32), "s_a"),
        numpy_helper.from_array(np.array(int(aq.zero_point), np.uint8), "z_a"),
        numpy_helper.from_array(w_int8, "w_q"),
        numpy_helper.from_array(wq.scale.detach().reshape(-1).numpy().astype(np.float32), "s_w"),
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
