"""The pipeline with ``target="onnxruntime-cpu"``: a measured latency stage, a latency budget met by the table's
prediction, a Pareto sweep, the exact mixed graph exported, checked and run by onnxruntime, and a reallocation that
reuses the stored latency table without measuring again."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
from quant.deploy.onnxruntime_cpu.latency.measure import SESSIONS
from quant.deploy.onnxruntime_cpu.runtime import make_session
from quant.pipeline import InMemoryStageStore, run_pipeline
from quant.target import form_for_bits

MODEL = ModelSpec(name="builtin:vit-digits")
DATA = DataSpec(num_calibration=64, batch_size=64)


def _config(**method) -> PipelineConfig:
    base = {"quantizer": "dopq", "target": "onnxruntime-cpu", "range_search": "minmax", "iterative_rounds": 0,
            "reconstruct": "none"}
    return PipelineConfig(model=MODEL, data=DATA, method=MethodSpec(**{**base, **method}), export_onnx=True,
                          preset="quick", device="cpu")


@pytest.fixture(scope="module")
def uniform_int8(tmp_path_factory):
    """A uniform int8 job (measures the latency table into a fresh cache)."""
    root = tmp_path_factory.mktemp("int8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPQ_LATENCY_CACHE", str(root / "cache"))
        store = InMemoryStageStore(root / "work")
        result = run_pipeline(_config(), output_dir=root / "bundle", store=store)
    return result, store, root


@pytest.fixture(scope="module")
def mixed(uniform_int8, tmp_path_factory):
    """A mixed job under a latency budget halfway between the fastest assignment and fp32, with a sweep,
    reusing the int8 job's latency stage output (as a reallocation does)."""
    _result, store, _ = uniform_int8
    table = store.outputs["latency"]["table"]
    fastest = table["rest_ms"] + sum(min(forms.values()) for forms in table["layers"].values())
    limit_ms = (fastest + table["fp32_ms"]) / 2
    root = tmp_path_factory.mktemp("mixed")
    before = SESSIONS.created
    mixed_store = InMemoryStageStore(root / "work", {"latency": store.outputs["latency"]})
    out = run_pipeline(_config(budgets={"latency_ms": limit_ms}, sweep=6, sweep_measure=1),
                       output_dir=root / "bundle", store=mixed_store)
    return out, mixed_store, root, limit_ms, SESSIONS.created - before


def test_uniform_int8_job_measures_every_layer_and_reports_the_prediction(uniform_int8):
    result, store, root = uniform_int8
    latency = store.outputs["latency"]
    table = latency["table"]
    assert set(table["layers"]) == set(result.allocation)
    for forms in table["layers"].values():
        assert forms["fp32"] > 0 and "int8" in forms
        assert all(ms > 0 for ms in forms.values())
    assert {entry["form"] for entry in result.allocation.values()} == {"int8"}
    predicted = result.metrics["predicted_latency_ms"]
    assert predicted == pytest.approx(table["rest_ms"] + sum(f["int8"] for f in table["layers"].values()))
    deployment = result.metrics["deployment"]
    assert deployment["latency_ms"] > 0 and deployment["checked"] is True
    assert abs(deployment["onnx_top1"] - deployment["torch_top1"]) <= 0.5
    assert (root / "cache").is_dir() and any((root / "cache").iterdir())  # cached for the next job


def test_mixed_job_meets_the_latency_budget_with_executable_forms(mixed):
    result, _store, _root, limit_ms, _ = mixed
    forms = {entry["form"] for entry in result.allocation.values()}
    assert forms <= {"fp32", "int8", "w8", "w4", "w4a8"} and len(forms) >= 2
    for name, entry in result.allocation.items():
        component = "matmul_qk" if name.endswith("matmul_qk") else "linear"
        if not name.endswith(("matmul_qk", "matmul_av", "patch_embed.proj")):
            assert form_for_bits("onnxruntime-cpu", component, entry["wbits"], entry["abits"]).name == entry["form"]
    assert result.metrics["predicted_latency_ms"] <= limit_ms + 1e-9
    assert result.budgets["latency_ms"]["limit"] == pytest.approx(limit_ms)
    assert result.budgets["latency_ms"]["used"] == pytest.approx(result.metrics["predicted_latency_ms"])


def test_reallocation_reuses_the_latency_table_without_measuring(uniform_int8, mixed):
    _, store, _ = uniform_int8
    _result, mixed_store, _root, _limit, sessions = mixed
    assert mixed_store.outputs["latency"] == store.outputs["latency"]
    assert sessions == 0  # no latency session opened by the profiler: the stored table was used


def test_mixed_export_runs_on_onnxruntime_and_agrees_with_torch(mixed):
    result, _store, root, _limit, _ = mixed
    path = root / "bundle" / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    counted = json.loads(meta["mpq.forms"])
    expected: dict[str, int] = {}
    for entry in result.allocation.values():
        expected[entry["form"]] = expected.get(entry["form"], 0) + 1
    assert counted == expected
    session = make_session(str(path))
    image = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits = session.run(None, {session.get_inputs()[0].name: image})[0]
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
    deployment = result.metrics["deployment"]
    assert deployment["images"] == 500
    assert abs(deployment["onnx_top1"] - deployment["torch_top1"]) <= 0.5
    assert deployment["agreement"] >= 99.0


def test_the_report_has_a_filled_pareto_chart_and_the_latency_table(mixed):
    result, _store, root, limit_ms, _ = mixed
    report = json.loads((root / "bundle" / "report.json").read_text())
    points = report["pareto"]
    assert len(points) == 7 and sum(p["chosen"] for p in points) == 1
    chosen = next(p for p in points if p["chosen"])
    assert chosen["value"] == pytest.approx(limit_ms)
    assert chosen["measured_latency_ms"] == pytest.approx(result.metrics["deployment"]["latency_ms"])
    measured = [p for p in points if p.get("measured_latency_ms") and not p["chosen"]]
    assert len(measured) == 1 and "assignment" not in measured[0]
    assert report["latency"]["predicted_ms"] == pytest.approx(result.metrics["predicted_latency_ms"])
    html = (root / "bundle" / "report.html").read_text()
    assert html.count('class="pareto-point') == 7 and html.count('class="pareto-measured"') == 2
    assert html.count('class="layer-latency"') == len(result.allocation)


def test_the_size_cost_of_block_forms_is_what_the_graph_stores(tmp_path):
    from onnx import numpy_helper

    from quant.data import load_dataset
    from quant.export import export_onnx
    from quant.layer_costs import layer_costs, profile_layers
    from quant.models import build_model
    from quant.ptq import quantize_table
    from quant.target import form_by_name, form_weight_bytes
    from quant.wrap import load_params_, quant_layers

    images = load_dataset("builtin:digits", split="calib", max_images=16).images
    chosen = {"qkv": "w4", "fc1": "w8", "fc2": "w4a8", "proj": "w4"}
    pairs = {c: [(f.wbits, f.abits) for f in [form_by_name("onnxruntime-cpu", c, n)]] for c, n in chosen.items()}
    qmodel, table, uniform, _ = quantize_table(
        build_model("builtin:vit-digits", {}, None), images, method="minmax", wbits=8, abits=8, range_search="minmax",
        target="onnxruntime-cpu", block_size=32, candidates=pairs)
    layers = quant_layers(qmodel)
    bits = {name: pairs[layer.component][0] for name, layer in layers.items() if layer.component in chosen}
    load_params_(qmodel, table.select({**uniform, **bits}))
    path = export_onnx(qmodel, tmp_path / "model.onnx", (3, 32, 32))
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    nodes = [node for node in model.graph.node if node.op_type == "MatMulNBits"]
    assert len(nodes) == len(bits)
    stored = sum(inits[name] for node in nodes for name in node.input[1:4] if name)
    profiles = profile_layers(qmodel, (3, 32, 32))
    predicted = sum(form_weight_bytes(layers[name].form, profiles[name].params, profiles[name].out_channels, 32)
                    for name in bits)
    assert stored == pytest.approx(predicted, rel=1e-9)
    totals = {"params": 1, "act_elements": 1}
    name = next(iter(bits))  # the size cost the ILP sees is the same number
    assert layer_costs(profiles[name], *bits[name], totals, layers[name].form, 32)["size"] == pytest.approx(
        form_weight_bytes(layers[name].form, profiles[name].params, profiles[name].out_channels, 32))
