"""Latency table (quant.latency): layer shape capture, the per-form ONNX graphs (node patterns, checker, the
MatMulNBits packing against a NumPy reference), interleaved timing, the table's arithmetic and JSON, the on-disk
cache (a hit opens no session) and ``mpq profile-latency``. No timing asserts: only that times are positive and
add up as defined."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper

from quant.deploy.onnxruntime_cpu.latency import (
    LatencyTable,
    LayerShape,
    capture_layers,
    profile_latency,
    unique_shapes,
)
from quant.deploy.onnxruntime_cpu.latency.cli import main as cli_main
from quant.deploy.onnxruntime_cpu.latency.graphs import graph_inputs, layer_forms, layer_graph, overhead_graph
from quant.deploy.onnxruntime_cpu.latency.measure import SESSIONS, open_session, time_interleaved
from quant.deploy.onnxruntime_cpu.latency.table import cache_path, check_forms
from quant.models import build_model
from quant.target import FormError
from quant.wrap import wrap_model_

torch.set_num_threads(1)

LINEAR = LayerShape("linear", ((1, 7, 96),), (40, 96), True)
LINEAR_ODD = LayerShape("linear", ((1, 100),), (24, 100), False)  # 2-D input, K not a multiple of the block
CONV = LayerShape("conv", ((1, 3, 16, 16),), (8, 3, 4, 4), True, ((4, 4), (0, 0), (1, 1), (1,)))
MATMUL = LayerShape("matmul", ((1, 2, 9, 16), (1, 2, 16, 9)))
CASES = [(s, f) for s in (LINEAR, LINEAR_ODD, CONV, MATMUL) for f in layer_forms(s)]

PATTERNS = {
    ("linear", "fp32"): ["MatMul", "Add"],
    ("linear", "int8"): ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul", "Add"],
    ("linear", "w8"): ["MatMulNBits", "Add"],
    ("linear", "w4"): ["MatMulNBits", "Add"],
    ("linear", "w4a8"): ["MatMulNBits", "Add"],
    ("conv", "fp32"): ["Conv"],
    ("conv", "int8"): ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv"],
    ("matmul", "fp32"): ["MatMul"],
    ("matmul", "int8"): ["QuantizeLinear", "DequantizeLinear"] * 2 + ["MatMul"],
}


def _run(model, feeds):
    return open_session(model).run(None, feeds)[0]


@pytest.mark.parametrize(("shape", "form"), CASES, ids=[f"{s.kind}{len(s.inputs[0])}d-{f}" for s, f in CASES])
def test_layer_graph_is_valid_runs_and_has_the_export_pattern(shape, form):
    model = layer_graph(shape, form)
    onnx.checker.check_model(model, full_check=True)
    ops = sorted(n.op_type for n in model.graph.node)
    expected = list(PATTERNS[(shape.kind, form)])
    if not shape.has_bias and "Add" in expected:
        expected.remove("Add")
    assert ops == sorted(expected)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    y = _run(model, graph_inputs(shape))
    if shape.kind == "linear":
        expected_shape = (*shape.inputs[0][:-1], shape.weight[0])
    else:
        expected_shape = {"conv": (1, 8, 4, 4), "matmul": (1, 2, 9, 9)}[shape.kind]
    assert y.shape == expected_shape
    assert np.isfinite(y).all() and np.abs(y).max() > 1e-3  # no degenerate (zero-scale) data


def _dequant_nbits(model):
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: a.i for a in node.attribute}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    packed, scales, zeros = (inits[name] for name in node.input[1:4])
    bits, block, n, k = attrs["bits"], attrs["block_size"], attrs["N"], attrs["K"]
    blocks = packed.shape[1]
    if bits == 4:  # low nibble first, for codes and zero points
        codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, blocks, block)
        zeros = np.stack([zeros & 15, zeros >> 4], axis=-1).reshape(n, -1)[:, :blocks]
    else:
        codes, zeros = packed, zeros.reshape(n, blocks)
    weight = (codes.astype(np.float32) - zeros[..., None]) * scales.reshape(n, blocks, 1)
    return weight.reshape(n, blocks * block)[:, :k], inits.get("bias")


@pytest.mark.parametrize("form", ["w8", "w4"])
@pytest.mark.parametrize("shape", [LINEAR, LINEAR_ODD], ids=["3d-bias", "2d-odd-k"])
def test_matmulnbits_packing_matches_numpy_dequantization(shape, form):
    model = layer_graph(shape, form, block_size=32)
    weight, bias = _dequant_nbits(model)
    feeds = graph_inputs(shape)
    expected = feeds["x"] @ weight.T + (0 if bias is None else bias)
    np.testing.assert_allclose(_run(model, feeds), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_layer_graph_refuses_forms_and_block_sizes():
    with pytest.raises(FormError, match="forms are fp32, int8"):
        layer_graph(CONV, "w4")
    with pytest.raises(ValueError, match="power of two"):
        layer_graph(LINEAR, "w4", block_size=24)
    with pytest.raises(FormError, match="unknown forms"):
        check_forms(("int4",))
    assert check_forms(("int8",)) == ("fp32", "int8")


def test_overhead_graph_returns_its_inputs():
    feeds = graph_inputs(MATMUL)
    outs = open_session(overhead_graph(MATMUL)).run(None, feeds)
    np.testing.assert_array_equal(outs[0], feeds["a"])
    np.testing.assert_array_equal(outs[1], feeds["b"])


def test_time_interleaved_runs_each_warmup_rounds_and_primes():
    calls = Counter()
    runs = [lambda i=i: calls.update([i]) for i in range(3)]
    times = time_interleaved(runs, rounds=4, warmup=2, primed=(1,))
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert calls == {0: 6, 1: 10, 2: 6}
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved(runs, rounds=0)


def _table() -> LatencyTable:
    return LatencyTable(key={"arch": "toy", "threads": 2}, rest_ms=1.5, fp32_ms=4.5,
                        layers={"a": {"fp32": 1.0, "int8": 0.25}, "b": {"fp32": 2.0, "w4": 0.5}},
                        method={"rounds": 3}, unique={"k": {"fp32": 1.0}}, layer_shapes={"a": "k", "b": "k2"})


def test_predict_is_rest_plus_the_chosen_forms():
    table = _table()
    assert table.predict({}) == pytest.approx(4.5)  # all fp32 = the measured model
    assert table.predict({"a": "int8", "b": "w4"}) == pytest.approx(1.5 + 0.25 + 0.5)
    assert table.predict({"b": "w4"}) == pytest.approx(1.5 + 1.0 + 0.5)
    assert table.ms("a", "int8") == 0.25
    with pytest.raises(KeyError, match="not measured"):
        table.predict({"a": "w4"})
    with pytest.raises(KeyError, match="not in the latency table"):
        table.predict({"c": "fp32"})


def test_table_json_round_trip():
    table = _table()
    again = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table
    with pytest.raises(ValueError, match="lacks"):
        LatencyTable.from_dict({"layers": {}})


@pytest.fixture(scope="module")
def vit():
    model = build_model("builtin:vit-digits")
    return wrap_model_(model, target="onnxruntime-cpu")


def test_capture_layers_groups_identical_layers(vit):
    shapes = capture_layers(vit, (3, 32, 32))
    assert len(shapes) == 38 and len(unique_shapes(shapes)) == 8
    qkv = shapes["blocks.0.attn.qkv"]
    assert (qkv.kind, qkv.inputs, qkv.weight, qkv.has_bias) == ("linear", ((1, 65, 96),), (288, 96), True)
    assert shapes["blocks.5.attn.matmul_qk"].inputs == ((1, 3, 65, 32), (1, 3, 32, 65))
    assert shapes["head"].inputs == ((1, 96),)
    assert shapes["patch_embed.proj"].conv == ((4, 4), (0, 0), (1, 1), (1,))


@pytest.fixture(scope="module")
def profiled(vit, tmp_path_factory):
    cache = tmp_path_factory.mktemp("latency-cache")
    before = SESSIONS.created
    fractions = []
    table = profile_latency(vit, (3, 32, 32), cache_dir=cache, rounds=3, warmup=1, progress=fractions.append)
    return table, cache, SESSIONS.created - before, fractions


def test_profile_measures_every_layer_in_every_form(profiled):
    table, cache, sessions, fractions = profiled
    assert sessions == 8 + 5 * 5 + 2 + 2 * 2 + 1  # overheads, 5 linear x 5 forms, conv, 2 matmuls, fp32 model
    assert len(table.layers) == 38
    for name, forms in table.layers.items():
        kind = "conv" if name == "patch_embed.proj" else "matmul" if "matmul" in name else "linear"
        assert set(forms) == {"conv": {"fp32", "int8"}, "matmul": {"fp32", "int8"}}.get(
            kind, {"fp32", "int8", "w8", "w4", "w4a8"})
        assert all(ms > 0 for ms in forms.values()), (name, forms)
    assert table.fp32_ms > 0
    assert table.rest_ms + sum(f["fp32"] for f in table.layers.values()) == pytest.approx(table.fp32_ms)
    assert table.predict({}) == pytest.approx(table.fp32_ms)
    assert table.key["block_size"] == 32 and table.key["batch"] == 1 and "runtime" in table.key
    assert cache_path(cache, table.key).is_file()
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_cache_hit_opens_no_session(vit, profiled):
    table, cache, _, _ = profiled
    before = SESSIONS.created
    again = profile_latency(vit, (3, 32, 32), cache_dir=cache, rounds=3, warmup=1)
    assert SESSIONS.created == before
    assert again == table and again is not table  # read back from the JSON file


def test_cli_prints_the_table(profiled, capsys):
    _table, cache, _, _ = profiled
    before = SESSIONS.created
    assert cli_main(["--model", "builtin:vit-digits", "--cache-dir", str(cache), "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.mlp.fc1 (x6)" in out and "predicted, all int8" in out and "fp32 model (measured)" in out
    assert cli_main(["--model", "builtin:vit-digits", "--cache-dir", str(cache), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["predicted_uniform_ms"]) == {"fp32", "int8", "w8", "w4", "w4a8"}
    assert SESSIONS.created == before  # both were cache hits


def test_cli_rejects_bad_input(capsys):
    assert cli_main(["--model", "builtin:vit-digits", "--arch-kwargs", "{bad"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--model", "builtin:vit-digits", "--forms", "int3"])


def test_isolated_layers_slower_than_the_model_are_scaled_so_predictions_stay_positive():
    from quant.deploy.onnxruntime_cpu.latency.profile import Timings, table_from

    shapes = {"a": LayerShape(kind="linear", inputs=((1, 5, 8),), weight=(8, 8), has_bias=True, calls=1),
              "b": LayerShape(kind="linear", inputs=((1, 5, 8),), weight=(16, 8), has_bias=True, calls=2)}
    per_call = {shapes["a"].key: {"fp32": 2.0, "int8": 1.0}, shapes["b"].key: {"fp32": 3.0, "int8": 1.5}}
    timings = Timings(per_call=per_call, overhead={}, models={"fp32": 4.0}, sessions=3)
    table = table_from(timings, shapes, key={"arch": "toy"}, method={})
    # isolated: a 2.0 + b 2 x 3.0 = 8.0 ms against a measured model of 4.0 ms -> every layer x 0.5, rest 0
    assert table.rest_ms == 0.0 and table.method["rest_negative"] is True
    assert table.method["raw_rest_ms"] == pytest.approx(-4.0) and table.method["layer_scale"] == pytest.approx(0.5)
    assert table.ms("a", "int8") == pytest.approx(0.5) and table.ms("b", "int8") == pytest.approx(1.5)
    assert table.predict({}) == pytest.approx(4.0)  # all fp32 is the measured model
    assert table.predict({"a": "int8", "b": "int8"}) == pytest.approx(2.0)
    calm = table_from(Timings(per_call=per_call, overhead={}, models={"fp32": 9.5}, sessions=3), shapes,
                      key={"arch": "toy"}, method={})
    assert calm.rest_ms == pytest.approx(1.5) and calm.method["layer_scale"] == 1.0
