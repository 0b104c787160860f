"""ONNX QDQ export: exactness of the QDQ building blocks, onnx.checker, and onnxruntime accuracy on the built-in
ViT (W8A8 and W4A4, uniform quantizers) against the PyTorch quantized model; learned weight codes export as the
codes the model computes with."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import timm
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch.nn.functional as F

from quant.calibration import SearchSettings
from quant.data import load_dataset
from quant.evaluate import compare_logits, predict_logits
from quant.export import export_onnx
from quant.export.qdq import container, grid_of
from quant.models import build_model
from quant.ptq import quantize_ptq
from quant.quantizers import AffineParams, affine_from_range, fake_quant, weight_codes
from quant.reconstruct import reconstruct_
from quant.wrap import quant_layers

torch.set_num_threads(2)


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_logits(session, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    outs = [session.run(None, {"images": images[i:i + batch].numpy()})[0] for i in range(0, len(images), batch)]
    return torch.from_numpy(np.concatenate(outs))


# ---- building blocks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8], ids=lambda b: f"{b}bit")
@pytest.mark.parametrize("low, high", [(-1.5, 2.0), (0.0, 1.0), (-3.0, -0.5), (0.25, 4.0)],
                         ids=["mixed", "softmax", "negative", "positive"])
def test_activation_qdq_equals_fake_quantizer(bits, low, high):
    params = affine_from_range(low, high, bits)
    x = torch.linspace(low - 1, high + 1, 4001)
    zero = int(params.zero_point)
    grid = grid_of(params)
    if grid is None:  # only an 8-bit zero point outside [0, 255] has no container
        assert bits == 8 and not 0 <= zero <= 255
        return
    expected = fake_quant(x, params)
    assert torch.equal(grid.simulate(x), expected)
    assert len(expected.unique()) > 2 ** (bits - 1)  # the test range covers many codes, not a degenerate grid


def test_container_choice():
    assert container(3, 15) == (np.uint8, 3)
    assert container(-20, 15) == (np.uint8, 0)  # codes [20, 35] in uint8
    assert container(250, 15) == (np.uint8, 250)
    assert container(-250, 15) is None and container(300, 15) is None  # zero point outside the container
    assert container(-1, 255) is None and container(256, 255) is None
    assert container(0, 255) == (np.uint8, 0)


def test_swin_with_log2_exports_and_runs(tmp_path):
    torch.manual_seed(0)
    float_model = timm.create_model("swin_tiny_patch4_window7_224", img_size=16, patch_size=2, window_size=4,
                                    embed_dim=16, depths=(2,), num_heads=(2,), num_classes=10).eval()
    images = torch.randn(8, 3, 16, 16)  # one stage of two blocks: plain and shifted windows
    model, _ = quantize_ptq(float_model, images, method="repq", wbits=4, abits=4, range_search="minmax")
    path = export_onnx(model, tmp_path / "swin.onnx", (3, 16, 16))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["mpq.float_simulated_activations"] == "2"  # one log2 quantizer per block
    assert int(meta["mpq.int4_weights"]) > 0
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["Log"] == 2 and ops["QuantizeLinear"] == int(meta["mpq.qdq_activations"])
    with torch.no_grad():
        expected = model(images)
    got = _ort_logits(_session(path), images)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


# ---- the built-in ViT ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    model = build_model("builtin:vit-digits")
    calib = load_dataset("builtin:digits", split="calib", model_name="builtin:vit-digits")
    test = load_dataset("builtin:digits", split="test", model_name="builtin:vit-digits")
    return model, calib.images[:64], test


@pytest.mark.parametrize("wbits, abits", [(8, 8), (4, 4)], ids=["W8A8", "W4A4"])
def test_onnxruntime_top1_matches_pytorch(digits, wbits, abits, tmp_path):
    float_model, calib, test = digits
    qmodel, _ = quantize_ptq(float_model, calib, method="minmax", wbits=wbits, abits=abits, head_bits=8)
    path = export_onnx(qmodel, tmp_path / "model.onnx", (3, 32, 32))

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = Counter(node.op_type for node in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    layers = 6 * 4 + 2  # qkv, proj, fc1, fc2 per block + patch embedding + head
    assert meta["mpq.qdq_weights"] == str(layers) and meta["mpq.float_simulated_activations"] == "0"
    assert ops["QuantizeLinear"] == int(meta["mpq.qdq_activations"]) == layers + 6 * 4  # + q, k, softmax, v
    assert ops["DequantizeLinear"] == ops["QuantizeLinear"] + layers
    int4 = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.UINT4]
    assert len(int4) == (2 * (layers - 2) if wbits == 4 else 0)  # codes + zero points; head/patch stay 8-bit

    torch_logits = predict_logits(qmodel, test.images, 250)
    ort_logits = _ort_logits(_session(path), test.images)
    torch_top1 = 100.0 * (torch_logits.argmax(1) == test.labels).float().mean().item()
    ort_top1 = 100.0 * (ort_logits.argmax(1) == test.labels).float().mean().item()
    assert abs(ort_top1 - torch_top1) <= 0.5, (ort_top1, torch_top1)
    # measured on the 500 test images (float 98.8 %): W8A8 98.6 % / KL 8.5e-5, W4A4 97.8 % / KL 0.028
    expected_top1, kl_bound = {8: (98.6, 1e-3), 4: (97.8, 0.045)}[wbits]
    assert abs(torch_top1 - expected_top1) <= 1.5, torch_top1
    kl = compare_logits(predict_logits(float_model, test.images, 250), torch_logits)["kl"]
    assert kl < kl_bound, kl


def test_grouped_scales_export_as_simulated_ops(digits, tmp_path):
    """Output-aware search: per-position (linear inputs) and per-head (q, k, v) quantizers are exported as
    their float op graph (simulated); per-tensor ones stay QDQ. onnxruntime agrees with PyTorch on top-1."""
    float_model, calib, test = digits
    qmodel, _ = quantize_ptq(float_model, calib, method="repq", wbits=4, abits=4, range_search="output",
                             search_settings=SearchSettings(images=16, act_tokens=1024, matmul_images=4))
    grouped = sum(p.granularity in ("position", "head") for layer in quant_layers(qmodel).values()
                  for p in layer.params.inputs if isinstance(p, AffineParams))
    assert grouped == 6 * (4 + 3)  # qkv, proj, fc1, fc2 inputs + q, k, v per block
    path = export_onnx(qmodel, tmp_path / "model.onnx", (3, 32, 32))
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert int(meta["mpq.float_simulated_activations"]) == grouped + 6  # + one log2 softmax per block
    images = test.images[:200]
    torch_logits = predict_logits(qmodel, images, 250)
    ort_logits = _ort_logits(_session(path), images)
    assert (torch_logits.argmax(1) == ort_logits.argmax(1)).float().mean().item() >= 0.99


def test_learned_weight_codes_export_as_the_model_computes(tmp_path):
    """After reconstruction layers compute with learned codes, not the nearest rounding of their float weights:
    the exported weight initializers are those codes, and onnxruntime agrees with the torch model."""
    torch.manual_seed(0)
    float_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8,
                                    embed_dim=16, depth=1, num_heads=2, num_classes=3).eval()
    with torch.no_grad():
        float_model.head.weight.mul_(50.0)  # a sharper head, so the reconstruction has something to learn
    calib = F.interpolate(torch.randn(32, 3, 4, 4, generator=torch.Generator().manual_seed(1)), size=16,
                          mode="bilinear", align_corners=False)
    qmodel, _ = quantize_ptq(float_model, calib, method="minmax", wbits=3, abits=8, head_bits=8)
    reconstruct_(qmodel, float_model, calib, loss="mse", iters=40, batch_size=16, round_lr=1e-2)
    learned = [name for name, layer in quant_layers(qmodel).items() if layer.params.weight is not None
               and layer.params.weight.codes is not None
               and not torch.equal(layer.params.weight.codes.float(),
                                   weight_codes(layer.weight, layer.params.weight.without_codes()))]
    assert learned, "no layer learned a rounding that differs from nearest rounding"
    path = export_onnx(qmodel, tmp_path / "model.onnx", (3, 16, 16))
    images = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = qmodel(images)
    got = _ort_logits(_session(path), images)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
