"""Deployment-target ONNX export (onnxruntime-cpu): MatMulNBits packing of fitted block params against
onnxruntime, each form's node pattern, and the built-in models with every form mixed (nearest and learned rounding):
onnx.checker, onnxruntime logits vs the torch simulation, latency measurement; params that do not match a layer's
form are refused."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from quant.calibration import calibrate_table
from quant.data import load_dataset
from quant.deploy.onnxruntime_cpu.check import (
    DeployCheckError,
    check_onnx,
    compare_with_torch,
    measure_model_latency,
)
from quant.deploy.onnxruntime_cpu.emit import pack_matmul_nbits as _pack_numpy
from quant.deploy.onnxruntime_cpu.runtime import make_session, session_options
from quant.evaluate import predict_logits
from quant.export import OnnxExportError, export_onnx
from quant.models import build_model
from quant.ptq import calibration_plan, wrapped_copy
from quant.quantizers import AffineParams, DynamicParams, LayerParams, fit_weight, weight_codes
from quant.quantizers.weight import padded_block_codes
from quant.reconstruct import reconstruct_
from quant.target import forms_for
from quant.wrap import load_params_, quant_layers, uniform_pairs

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _two_threads(monkeypatch):
    monkeypatch.setenv("MPQ_ORT_THREADS", "2")


def _matmul_nbits_model(packed, scales, zero, k: int, n: int, bits: int, block_size: int, level: int):
    node = helper.make_node("MatMulNBits", ["x", "B", "scales", "zero_points"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block_size, accuracy_level=level)
    graph = helper.make_graph(
        [node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(packed.numpy(), "B"), numpy_helper.from_array(scales.numpy(), "scales"),
         numpy_helper.from_array(zero.numpy(), "zero_points")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _block_params(weight: torch.Tensor, bits: int, block_size: int):
    """The block-wise weight params calibration fits (scale and zero point [N, n_blocks, 1]) and their codes
    [N, n_blocks, block_size] (``padded_block_codes``, the codes the exporter writes)."""
    params = fit_weight(weight, bits, layout="block", block_size=block_size)
    codes = padded_block_codes(weight, params)
    return params.scale, params.zero_point, codes


def pack_matmul_nbits(codes, zero, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exporter's ``MatMulNBits`` packing (numpy) on torch inputs, returning torch tensors."""
    packed, zero_packed = _pack_numpy(np.asarray(codes), np.asarray(zero), bits)
    return torch.from_numpy(packed), torch.from_numpy(zero_packed)


# ---- MatMulNBits packing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8], ids=lambda b: f"{b}bit")
@pytest.mark.parametrize("k, block_size", [(64, 32), (100, 32), (112, 16), (48, 16)],
                         ids=["even-blocks", "padded-K", "odd-blocks", "three-blocks"])
def test_matmul_nbits_packing_matches_onnxruntime(bits, k, block_size):
    torch.manual_seed(0)
    n = 24
    weight = torch.randn(n, k)
    scale, zero, codes = _block_params(weight, bits, block_size)
    packed, zero_packed = pack_matmul_nbits(codes, zero, bits)
    n_blocks = -(-k // block_size)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (n, n_blocks, block_size * bits // 8)
    assert tuple(zero_packed.shape) == ((n * -(-n_blocks // 2),) if bits == 4 else (n * n_blocks,))
    dequant = ((codes - zero) * scale).reshape(n, -1)[:, :k]
    x = torch.randn(7, k)
    model = _matmul_nbits_model(packed, scale.reshape(-1), zero_packed, k, n, bits, block_size, 0)
    got = torch.from_numpy(make_session(model).run(None, {"x": x.numpy()})[0])
    expected = x @ dequant.t()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("k", [64, 100], ids=["even-blocks", "padded-K"])
def test_accuracy_level_4_equals_the_dynamic_block_input_quantizer(k):
    """w4a8: onnxruntime quantizes the input per row and K-block to int8 itself; the simulation's
    ``dynamic_block_quant`` followed by the dequantized weight gives the same product."""
    from quant.quantizers.uniform import dynamic_block_quant

    torch.manual_seed(1)
    n, block_size = 40, 32
    weight = torch.randn(n, k)
    scale, zero, codes = _block_params(weight, 4, block_size)
    packed, zero_packed = pack_matmul_nbits(codes, zero, 4)
    model = _matmul_nbits_model(packed, scale.reshape(-1), zero_packed, k, n, 4, block_size, 4)
    x = torch.randn(9, k)
    got = torch.from_numpy(make_session(model).run(None, {"x": x.numpy()})[0])
    dequant = ((codes - zero) * scale).reshape(n, -1)[:, :k]
    expected = dynamic_block_quant(x, block_size) @ dequant.t()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5), (got - expected).abs().max()
    assert not torch.allclose(got, x @ dequant.t(), atol=1e-3)  # the input really is quantized


def test_four_bit_packing_puts_the_even_index_in_the_low_nibble():
    codes = torch.tensor([[[1, 2, 3, 4]], [[15, 0, 7, 9]]], dtype=torch.float32)  # [N=2, n_blocks=1, 4]
    packed, zero_packed = pack_matmul_nbits(codes, torch.tensor([[5.0], [10.0]]), 4)
    assert packed.tolist() == [[[0x21, 0x43]], [[0x0F, 0x97]]]
    assert zero_packed.tolist() == [5, 10]  # one zero point per row, padded to a byte each
    _, zero_packed = pack_matmul_nbits(torch.zeros(2, 3, 4), torch.tensor([[1.0, 2, 3], [4, 5, 6]]), 4)
    assert zero_packed.tolist() == [0x21, 0x03, 0x54, 0x06]  # rows packed on their own: N * ceil(n_blocks / 2)


def test_packing_rejects_codes_out_of_range():
    with pytest.raises(OnnxExportError, match=r"\[0, 15\]"):
        pack_matmul_nbits(torch.full((1, 1, 4), 16.0), torch.zeros(1, 1), 4)
    with pytest.raises(OnnxExportError, match="4 or 8 bits"):
        pack_matmul_nbits(torch.zeros(1, 1, 4), torch.zeros(1, 1), 3)


# ---- the built-in models with every form ----------------------------------------------------------------
TARGET = "onnxruntime-cpu"


@pytest.fixture(scope="module", params=["builtin:vit-digits", "builtin:swin-digits"], ids=["vit", "swin"])
def target_model(request):
    """(float model, target-mode quantized model, its parameter table with every form of every layer, calibration
    images, test split) of a built-in model."""
    name = request.param
    model = build_model(name)
    calib = load_dataset("builtin:digits", split="calib", model_name=name)
    test = load_dataset("builtin:digits", split="test", model_name=name)
    qmodel = wrapped_copy(model, target=TARGET)
    layers = quant_layers(qmodel)
    pairs = {n: [(f.wbits, f.abits) for f in forms_for(TARGET, layer.component)] for n, layer in layers.items()}
    plan = calibration_plan(qmodel, method="minmax", pairs=pairs, reference=uniform_pairs(layers, 8, 8),
                            range_search="minmax")
    table = calibrate_table(qmodel, calib.images[:64], plan)
    return model, qmodel, table, calib.images[:64], test


def _assign(qmodel, table, assignment) -> None:
    load_params_(qmodel, table.select(assignment))


def _mixed_bits(qmodel) -> dict[str, tuple[int, int]]:
    """Each layer gets the next form of its kind in turn, so every form of every kind is used."""
    seen: Counter = Counter()
    bits = {}
    for name, layer in quant_layers(qmodel).items():
        forms = forms_for(TARGET, layer.component)
        kind = len(forms)  # linear: 5 forms, conv and matmul: 2
        form = forms[seen[kind] % kind]
        seen[kind] += 1
        bits[name] = (form.wbits, form.abits)
    return bits


def _initializers(proto) -> dict:
    return {init.name: init for init in proto.graph.initializer}


def test_every_form_exports_checks_and_matches_torch(target_model, tmp_path):
    _, qmodel, table, _, test = target_model
    _assign(qmodel, table, _mixed_bits(qmodel))
    layers = quant_layers(qmodel)
    forms = Counter(layer.form.name for layer in layers.values())
    assert set(forms) == {"fp32", "int8", "w8", "w4", "w4a8"}

    path = export_onnx(qmodel, tmp_path / "model.onnx", tuple(test.images.shape[1:]))
    check_onnx(path)
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["mpq.target"] == TARGET and meta["mpq.block_size"] == "32"
    assert json.loads(meta["mpq.forms"]) == dict(forms)
    assert meta["mpq.float_simulated_activations"] == "0"

    # node patterns: one MatMulNBits per block-wise linear with the form's bits and accuracy level ...
    inits = _initializers(proto)
    nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    attrs = Counter((a["bits"], a["accuracy_level"], a["block_size"])
                    for a in ({x.name: x.i for x in n.attribute} for n in nbits))
    assert attrs == Counter({(8, 0, 32): forms["w8"], (4, 0, 32): forms["w4"], (4, 4, 32): forms["w4a8"]})
    assert all(n.domain == "com.microsoft" and inits[n.input[1]].data_type == TensorProto.UINT8 for n in nbits)
    # ... int8 weights as int8 per-channel DequantizeLinear with zero points 0 ...
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    int8_weighted = sum(layer.form.name == "int8" and layer.has_weight for layer in layers.values())
    assert len(weight_dq) == int8_weighted
    for node in weight_dq:
        assert inits[node.input[0]].data_type == TensorProto.INT8
        assert not numpy_helper.to_array(inits[node.input[2]]).any()
    # ... and a uint8 QuantizeLinear per static activation quantizer (int8 linears/conv: 1, int8 matmuls: 2)
    static = sum((1 if layer.has_weight else 2) for layer in layers.values() if layer.form.name == "int8")
    quantize = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == static == int(meta["mpq.qdq_activations"])
    assert all(inits[n.input[2]].data_type == TensorProto.UINT8 for n in quantize)

    # onnxruntime vs the torch simulation on the whole test split. Measured: vit 98.8 / 98.8 % (max |diff|
    # 0.034), swin 99.2 / 99.2 % (0.012); the residue is rounding-tie flips in the int8 QDQ codes and the
    # dynamic w4a8 input blocks (the w8/w4 forms alone agree to 4e-6)
    result = compare_with_torch(path, qmodel, test.images, test.labels, batch_size=250)
    assert result["images"] == len(test.images)
    assert abs(result["top1_diff"]) <= 0.5, result
    assert result["agreement"] >= 99.0 and result["max_abs_diff"] < 0.2 and result["kl"] < 1e-4, result
    assert result["onnx_top1"] >= 95.0, result

    latency = measure_model_latency(path, tuple(test.images.shape[1:]), repeats=3, warmup=1)
    assert 0 < latency["p10_ms"] <= latency["median_ms"] <= latency["p90_ms"]
    assert latency["runtime"]["threads"] == 2


def test_onnxruntime_fuses_the_int8_linear_pattern(target_model, tmp_path, request):
    """The int8 QDQ pattern of the block linears ([B, T, K] inputs) is what onnxruntime 1.32 turns into integer
    kernels (MatMulIntegerToFloat). Not the head ([B, K] input: MatMul + Add become a float Gemm first, its
    weight DequantizeLinear stays) nor the patch-embedding Conv (no QDQ on its output, so no QLinearConv);
    the latency table measures the same graphs, so its numbers say what that costs."""
    if request.node.callspec.id != "vit":
        pytest.skip("the same linear pattern as the vit case; one graph optimisation is enough")
    _, qmodel, table, _, test = target_model
    _assign(qmodel, table, {name: (8, 8) if layer.has_weight else (16, 16)
                            for name, layer in quant_layers(qmodel).items()})
    path = export_onnx(qmodel, tmp_path / "model.onnx", tuple(test.images.shape[1:]))
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    linears = sum(layer.has_weight and layer.component not in ("patch_embed", "head")
                  for layer in quant_layers(qmodel).values())
    assert ops["MatMulIntegerToFloat"] == linears, ops


def test_fp32_form_everywhere_equals_the_float_model(target_model, tmp_path):
    model, qmodel, table, _, test = target_model
    _assign(qmodel, table, {name: (16, 16) for name in quant_layers(qmodel)})
    path = export_onnx(qmodel, tmp_path / "model.onnx", tuple(test.images.shape[1:]))
    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == ops["MatMulNBits"] == 0
    images = test.images[:64]
    result = compare_with_torch(path, model, images)  # against the float model itself
    assert result["agreement"] == 100.0 and result["max_abs_diff"] < 1e-4, result
    assert torch.allclose(predict_logits(qmodel, images), predict_logits(model, images), atol=1e-5)


def _with_params(layer, weight="keep", inputs="keep") -> LayerParams:
    params = layer.params
    return LayerParams(params.weight if weight == "keep" else weight, params.inputs if inputs == "keep" else inputs)


def _mismatches(layer):
    """``{form: (params that do not match it, message)}`` for a linear layer (weights 96 wide: blocks of 32)."""
    w, bs = layer.weight, layer.block_size
    grid = AffineParams(torch.tensor(0.05), torch.tensor(3.0), 8)
    return {
        "int8": [
            ((fit_weight(w, 8, layout="channel"), "keep"), "its weights are not symmetric"),
            (("keep", (AffineParams(torch.full((5, 1), 0.05), torch.full((5, 1), 3.0), 8, "position"),)),
             r"input params .*'granularity': 'position'.* are not a uint8 per-tensor grid"),
            (("keep", (AffineParams(torch.tensor(0.05), torch.tensor(300.0), 8),)), r"'zero_point': 300\.0"),
        ],
        "w4": [((fit_weight(w, 4, layout="channel"), "keep"), "its weight params are not block-wise")],
        "w4a8": [
            (("keep", (grid,)), rf"input params .*'kind': 'uniform'.* are not the dynamic int8 blocks of {bs}"),
            (("keep", (DynamicParams(8, "block", 2 * bs),)),
             rf"'block_size': {2 * bs}.* are not the dynamic int8 blocks of {bs}"),
            (("keep", (DynamicParams(8, "token"),)), r"'granularity': 'token'.* are not the dynamic int8 blocks"),
        ],
    }


def test_a_layer_whose_params_do_not_match_its_form_is_refused(target_model, tmp_path, request):
    """onnxruntime executes a form exactly as the form says; params that the torch simulation would run
    differently (asymmetric weights in int8, per-position or out-of-range input grids, per-channel weights in a
    block form, a w4a8 input that is not the kernel's own dynamic int8 blocks) are refused, naming the layer
    (the table's own entries of every form export: ``test_every_form_exports_checks_and_matches_torch``)."""
    if request.node.callspec.id != "vit":
        pytest.skip("architecture independent: the checks are per layer")
    _, qmodel, table, _, test = target_model
    layers = quant_layers(qmodel)
    name = next(n for n, layer in layers.items() if layer.component == "fc1")
    layer = layers[name]
    base = {n: (8, 8) if lay.has_weight else (16, 16) for n, lay in layers.items()}
    for form, cases in _mismatches(layer).items():
        pair = next((f.wbits, f.abits) for f in forms_for(TARGET, "fc1") if f.name == form)
        for (weight, inputs), message in cases:
            _assign(qmodel, table, {**base, name: pair})
            layer.load_params(_with_params(layer, weight, inputs))
            assert layer.form.name == form
            with pytest.raises(OnnxExportError, match=rf"layer '{name}'.*{message}"):
                export_onnx(qmodel, tmp_path / "model.onnx", tuple(test.images.shape[1:]))


def test_learned_codes_of_every_form_export_as_the_model_computes(target_model, tmp_path, request):
    """After reconstruction the int8 and block forms compute with learned codes (and int8 inputs with learned
    scales): the exported graph holds exactly those codes and onnxruntime agrees with the torch model."""
    if request.node.callspec.id != "vit":
        pytest.skip("the same export code paths as the vit case; one reconstruction is enough")
    model, qmodel, table, calib, test = target_model
    _assign(qmodel, table, _mixed_bits(qmodel))
    reconstruct_(qmodel, model, calib[:16], loss="mse", iters=12, batch_size=8, max_blocks=4, round_lr=1e-2,
                 act_lr=1e-5)
    layers = quant_layers(qmodel)
    learned = {n for n, layer in layers.items() if layer.params.weight is not None
               and layer.params.weight.codes is not None
               and not torch.equal(layer.params.weight.codes.float(),
                                   weight_codes(layer.weight, layer.params.weight.without_codes()))}
    assert {layers[n].form.name for n in learned} >= {"int8", "w4"}, learned
    path = export_onnx(qmodel, tmp_path / "model.onnx", tuple(test.images.shape[1:]))
    arrays = [numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer]
    for name in learned:  # every learned code matrix is in the graph, in its form's layout
        params = layers[name].params.weight
        if params.layout == "symmetric":  # int8 codes with zero point 0, [K, N]
            expected = (params.codes.to(torch.int16) - 128).to(torch.int8).t().numpy()
        else:  # MatMulNBits' packed B
            expected = pack_matmul_nbits(padded_block_codes(layers[name].weight, params), params.zero_point,
                                         params.bits)[0].numpy()
        assert any(a.shape == expected.shape and a.dtype == expected.dtype and (a == expected).all()
                   for a in arrays), name
    result = compare_with_torch(path, qmodel, test.images[:100])
    assert result["agreement"] >= 99.0 and result["max_abs_diff"] < 0.2 and result["kl"] < 1e-4, result


# ---- deploy checks: errors -------------------------------------------------------------------------------
def test_check_onnx_reports_a_missing_or_invalid_file(tmp_path):
    with pytest.raises(DeployCheckError, match="does not exist"):
        check_onnx(tmp_path / "absent.onnx")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])  # "w" is neither an input nor an initializer
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "bad.onnx")
    with pytest.raises(DeployCheckError, match="bad.onnx fails onnx.checker"):
        check_onnx(tmp_path / "bad.onnx")


def test_measure_model_latency_rejects_bad_arguments(tmp_path):
    with pytest.raises(DeployCheckError, match="does not exist"):
        measure_model_latency(tmp_path / "absent.onnx", (3, 32, 32))
    with pytest.raises(DeployCheckError, match=r"\(C, H, W\)"):
        measure_model_latency(tmp_path / "absent.onnx", (2, 3, 32, 32))
    with pytest.raises(DeployCheckError, match="repeats"):
        measure_model_latency(tmp_path / "absent.onnx", (3, 32, 32), repeats=0)
