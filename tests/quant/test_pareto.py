"""Latency budgets in the allocation ILP and Pareto sweeps (quant.allocation), on small synthetic problems whose
optimum is checked by brute force; the iterative update's per-layer KL measured on the table's entries."""

from __future__ import annotations

import copy
import itertools

import pytest
import timm
import torch

from quant.allocation import (
    build_problem,
    measure_layer_kl,
    pareto_from_stages,
    problem_budgets,
    solve_allocation,
    sweep_problem,
)
from quant.allocation.iterative import LayerKL, update_layer_factors
from quant.calibration import calibrate_table
from quant.config import MethodSpec
from quant.deploy.onnxruntime_cpu.latency import LatencyTable
from quant.errors import PipelineInputError
from quant.evaluate import compare_logits, predict_logits
from quant.layer_costs import LayerProfile
from quant.ptq import calibration_plan, wrapped_copy
from quant.sensitivity import SensitivityTable
from quant.target import form_for_bits, forms_for
from quant.wrap import load_params_, quant_layers, uniform_pairs

TARGET = "onnxruntime-cpu"
PROFILES = {
    "blocks.0.attn.qkv": LayerProfile("blocks.0.attn.qkv", "qkv", 3 * 64 * 64, 192, 17 * 64 * 192, 17 * 64),
    "blocks.0.attn.matmul_qk": LayerProfile("blocks.0.attn.matmul_qk", "matmul_qk", 0, 0, 4 * 17 * 17 * 16,
                                            2 * 4 * 17 * 16),
    "blocks.0.mlp.fc1": LayerProfile("blocks.0.mlp.fc1", "fc1", 64 * 256, 256, 17 * 64 * 256, 17 * 64),
    "blocks.0.mlp.fc2": LayerProfile("blocks.0.mlp.fc2", "fc2", 256 * 64, 64, 17 * 256 * 64, 17 * 256),
}
#: per-layer ms of each form: deliberately not monotone in bits (w8 slower than fp32 for fc2, as measured on CPUs)
LATENCY_MS = {
    "blocks.0.attn.qkv": {"fp32": 1.0, "int8": 0.40, "w8": 1.10, "w4": 0.60, "w4a8": 0.80},
    "blocks.0.attn.matmul_qk": {"fp32": 0.30, "int8": 0.25},
    "blocks.0.mlp.fc1": {"fp32": 1.4, "int8": 0.50, "w8": 1.50, "w4": 0.75, "w4a8": 1.0},
    "blocks.0.mlp.fc2": {"fp32": 1.4, "int8": 0.55, "w8": 1.60, "w4": 0.70, "w4a8": 1.0},
}
REST_MS = 0.9
FP32_MS = REST_MS + sum(f["fp32"] for f in LATENCY_MS.values())
#: predicted loss of each form (nats per image): int8 cheap but not free, w4 the most damaging
LOSS = {"fp32": 0.0, "int8": 0.010, "w8": 0.002, "w4": 0.030, "w4a8": 0.045}
LAYER_SCALE = {"blocks.0.attn.qkv": 1.0, "blocks.0.attn.matmul_qk": 0.5, "blocks.0.mlp.fc1": 2.0,
               "blocks.0.mlp.fc2": 3.0}


def _table() -> LatencyTable:
    return LatencyTable(key={"runtime": "onnxruntime test"}, layers=LATENCY_MS, rest_ms=REST_MS, fp32_ms=FP32_MS)


def _omega(name: str, wbits: int, abits: int) -> float:
    form = form_for_bits(TARGET, PROFILES[name].component, wbits, abits)
    return LOSS[form.name] * LAYER_SCALE[name]


def _brute_force(limit_ms: float) -> tuple[float, dict[str, str]] | None:
    """Best (loss, forms) with rest + sum of layer ms <= limit_ms, or None."""
    names = list(PROFILES)
    options = [[f.name for f in forms_for(TARGET, PROFILES[n].component)] for n in names]
    best = None
    for combo in itertools.product(*options):
        ms = REST_MS + sum(LATENCY_MS[n][f] for n, f in zip(names, combo))
        if ms > limit_ms + 1e-9:
            continue
        loss = sum(LOSS[f] * LAYER_SCALE[n] for n, f in zip(names, combo))
        if best is None or loss < best[0] - 1e-12:
            best = (loss, dict(zip(names, combo)))
    return best


def _method(**budgets) -> MethodSpec:
    return MethodSpec(target=TARGET, head_bits=None, wbits=8, abits=8, budgets=budgets)


def test_latency_budgets_become_a_limit_on_the_layers_sum():
    table = _table()
    assert problem_budgets({"latency": 0.5}, table) == pytest.approx({"latency": 0.5 * FP32_MS - REST_MS})
    assert problem_budgets({"latency_ms": 3.0, "wbits": 6}, table) == pytest.approx({"latency": 3.0 - REST_MS,
                                                                                     "wbits": 6.0})
    both = problem_budgets({"latency": 0.9, "latency_ms": 3.0}, table)
    assert both["latency"] == pytest.approx(min(0.9 * FP32_MS, 3.0) - REST_MS)
    assert problem_budgets({"latency": 0.5}, None) == {}  # nothing to check against before the table exists
    with pytest.raises(PipelineInputError) as info:
        problem_budgets({"latency_ms": REST_MS * 0.5}, table)
    assert info.value.code == "infeasible_budget" and "rest of the model" in info.value.message


def test_candidates_are_the_target_forms_with_measured_latency():
    problem = build_problem(PROFILES, _method(latency=0.6), _omega, _table())
    by_name = {layer.name: layer for layer in problem.layers}
    qkv = {c.pair: c for c in by_name["blocks.0.attn.qkv"].candidates}
    assert set(qkv) == {(16, 16), (8, 8), (8, 16), (4, 16), (4, 8)}
    assert qkv[(4, 8)].costs["latency"] == pytest.approx(0.80)
    assert qkv[(8, 16)].costs["latency"] == pytest.approx(1.10)
    matmul = {c.pair for c in by_name["blocks.0.attn.matmul_qk"].candidates}
    assert matmul == {(16, 16), (16, 8)}


@pytest.mark.parametrize("fraction", [0.53, 0.6, 0.7, 0.85, 1.0])
def test_latency_budget_solution_is_the_brute_force_optimum(fraction):
    table = SensitivityTable(components={n: p.component for n, p in PROFILES.items()}, weight={}, act={},
                             target=TARGET)
    for name, profile in PROFILES.items():
        forms = forms_for(TARGET, profile.component)
        table.form_weight[name] = {f.name: LOSS[f.name] * LAYER_SCALE[name] for f in forms}
        table.form_act[name] = {f.name: 0.0 for f in forms}
    result = solve_allocation(table, PROFILES, _method(latency=fraction), type_aware=False, latency=_table())
    expected = _brute_force(fraction * FP32_MS)
    assert expected is not None
    assert result.objective == pytest.approx(expected[0], abs=1e-9)
    forms = {n: form_for_bits(TARGET, PROFILES[n].component, *pair).name for n, pair in result.assignment.items()}
    assert _table().predict(forms) <= fraction * FP32_MS + 1e-9


def test_an_unreachable_latency_budget_says_the_fastest_achievable_latency():
    table = SensitivityTable(components={n: p.component for n, p in PROFILES.items()}, weight={}, act={},
                             target=TARGET)
    fastest = REST_MS + sum(min(forms.values()) for forms in LATENCY_MS.values())
    with pytest.raises(PipelineInputError) as info:
        solve_allocation(table, PROFILES, _method(latency_ms=fastest * 0.97), latency=_table())
    assert info.value.code == "infeasible_budget"
    assert f"{fastest:.3f} ms" in info.value.message
    assert info.value.details["min_achievable"]["latency_ms"] == pytest.approx(fastest)


def test_sweep_points_are_optimal_and_the_chosen_point_is_marked():
    method = _method(latency=0.6)
    points = sweep_problem(PROFILES, method, _omega, _table(), budget="latency_ms", points=12,
                           chosen_objective=None, measure=2)
    assert len(points) == 13 and sum(p["chosen"] for p in points) == 1
    chosen = next(p for p in points if p["chosen"])
    assert chosen["value"] == pytest.approx(0.6 * FP32_MS)
    values = [p["value"] for p in points]
    assert values == sorted(values)
    feasible = [p for p in points if p["objective"] is not None]
    for point in feasible:
        expected = _brute_force(point["value"])
        assert point["objective"] == pytest.approx(expected[0], abs=1e-9)
        assert point["predicted_latency_ms"] <= point["value"] + 1e-9
    objectives = [p["objective"] for p in feasible]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(objectives))  # looser budget, never worse
    assert objectives[-1] == pytest.approx(0.0)  # the loosest point keeps everything fp32-accurate
    kept = [p for p in points if "assignment" in p]
    assert len(kept) == 2 and not any(p["chosen"] for p in kept)


def test_sweep_in_fraction_units_and_explicit_values():
    points = sweep_problem(PROFILES, _method(), _omega, _table(), budget="latency", values=[0.5, 0.75, 1.0])
    assert [p["value"] for p in points] == pytest.approx([0.5, 0.75, 1.0])
    assert not any(p["chosen"] for p in points)
    assert points[0]["objective"] is None and points[0]["status"] == "infeasible"  # fastest is 0.52 of fp32
    assert _brute_force(0.5 * FP32_MS) is None
    for point in points[1:]:
        assert point["objective"] == pytest.approx(_brute_force(point["value"] * FP32_MS)[0], abs=1e-9)


def _stages(target: str = "sim") -> dict:
    components = {n: p.component for n, p in PROFILES.items()}
    weight = {n: ({} if p.params == 0 else {b: 0.1 / b for b in (2, 3, 4, 5, 6, 8)}) for n, p in PROFILES.items()}
    act = {n: {b: 0.05 / b for b in (3, 4, 5, 6, 8)} for n in PROFILES}
    table = SensitivityTable(components=components, weight=weight, act=act)
    return {"sensitivity": {"table": table.to_dict()},
            "allocate": {"profiles": {n: p.to_dict() for n, p in PROFILES.items()}, "layer_factors": {}}}


def test_pareto_from_stored_stages_and_its_errors():
    method = MethodSpec(budgets={"wbits": 5.0}, head_bits=None)
    out = pareto_from_stages(_stages(), method, "wbits", points=16)
    assert out["unit"] == "average weight bits" and out["chosen"] == pytest.approx(5.0)
    assert len(out["points"]) == 17
    objectives = [p["objective"] for p in out["points"] if p["objective"] is not None]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(objectives))
    with pytest.raises(PipelineInputError) as info:
        pareto_from_stages({"sensitivity": {"skipped": True}}, method, "wbits")
    assert info.value.code == "sensitivity_unavailable"
    with pytest.raises(PipelineInputError) as info:
        pareto_from_stages(_stages(), method, "latency")
    assert info.value.code == "invalid_budget" and "latency table" in info.value.message
    with pytest.raises(PipelineInputError) as info:
        pareto_from_stages(_stages(), method, "wbits", points=1)
    assert info.value.code == "invalid_budget"


# ---- the iterative update ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_table():
    """A tiny ViT wrapped at W4A4 and its minmax table of a few pairs per layer."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=1,
                              embed_dim=32, num_heads=2, num_classes=5).eval()
    with torch.no_grad():  # confident predictions (random init gives near-uniform ones, where every KL is ~0)
        model.head.weight.mul_(50)
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    qmodel = wrapped_copy(model)
    layers = quant_layers(qmodel)
    reference = uniform_pairs(layers, 4, 4, head_bits=None)
    pairs = {n: [(w, a) for w in (2, 4) for a in (3, 8)] for n in layers}
    plan = calibration_plan(qmodel, method="minmax", pairs=pairs, reference=reference)
    table = calibrate_table(qmodel, images, plan)
    load_params_(qmodel, table.select(reference))
    return qmodel, table, images


def _brute_kl(qmodel, table, images, name, pair) -> float:
    """KL to float with only ``name`` at its ``pair`` entry, on a copy, with plain evaluation."""
    model = copy.deepcopy(qmodel)
    load_params_(model, {})
    reference = predict_logits(model, images)
    load_params_(model, {name: table.entry(name, pair)})
    return compare_logits(reference, predict_logits(model, images))["kl"]


def test_layer_kl_measures_each_layer_and_pair_once(tiny_table):
    qmodel, table, images = tiny_table
    before = {n: layer.params for n, layer in quant_layers(qmodel).items()}
    passes = []
    handle = qmodel.register_forward_pre_hook(lambda _m, _args: passes.append(1))
    layer_kl = LayerKL(qmodel, table, images)
    first = {"blocks.0.attn.qkv": (4, 3), "blocks.0.mlp.fc1": (2, 8), "blocks.0.attn.matmul_av": (16, 3)}
    try:
        got = layer_kl(first)
        assert len(passes) == 1 + 3  # the float logits once, then one pass per (layer, pair)
        second = {"blocks.0.attn.qkv": (4, 3), "blocks.0.mlp.fc1": (4, 8), "blocks.0.attn.proj": (2, 3)}
        got2 = layer_kl(second)
        assert len(passes) == 4 + 2  # only the two new (layer, pair)s
        assert layer_kl(first) == got and len(passes) == 6  # nothing measured again
    finally:
        handle.remove()
    assert got2["blocks.0.attn.qkv"] == got["blocks.0.attn.qkv"]
    for assignment, values in ((first, got), (second, got2)):
        for name, pair in assignment.items():
            assert values[name] > 1e-5, (name, pair, values)
            assert values[name] == pytest.approx(_brute_kl(qmodel, table, images, name, pair), rel=1e-6, abs=1e-12)
    assert got2["blocks.0.mlp.fc1"] < got["blocks.0.mlp.fc1"]  # 4-bit weights cost less than 2-bit ones
    assert all(layer.params is before[n] for n, layer in quant_layers(qmodel).items())  # the model is restored
    assert measure_layer_kl(qmodel, table, images, first) == got


def test_layer_factors_fold_the_damped_measured_ratio():
    sens = SensitivityTable(components={"a": "fc1", "b": "fc2", "c": "qkv"},
                            weight={"a": {4: 1.0}, "b": {4: 1.0}, "c": {4: 0.0}}, act={"a": {}, "b": {}, "c": {}})
    assignment = {"a": (4, 16), "b": (4, 16), "c": (4, 16)}
    update_layer_factors(sens, assignment, {"a": 4.0, "b": 100.0, "c": 1.0}, type_aware=False)
    assert sens.layer_factors == {"a": pytest.approx(2.0), "b": 4.0}  # sqrt(measured / predicted), clamped; c: 0
    update_layer_factors(sens, assignment, {"a": 8.0, "b": 4.0, "c": 1.0}, type_aware=False)
    # geometric mean with the previous factor: sqrt(2^2 * 8 / (2 * 1)) = 4 for a; b: sqrt(16 * 4 / 4) = 4
    assert sens.layer_factors["a"] == pytest.approx(4.0) and sens.layer_factors["b"] == pytest.approx(4.0)
