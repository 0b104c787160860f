"""The parameter table is the one place quantization parameters live: a reconstructed job ships the same bundle
tensors whatever ran between reconstruction and the bundle (an ONNX export, measured sweep points) and after a
reallocation round trip, on the sim target and on onnxruntime-cpu, with learned weight rounding and learned
activation scales in the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
from quant.pipeline import InMemoryStageStore, run_pipeline

DATA = DataSpec(num_calibration=32, batch_size=32)
SHARED = ("calibrate", "sensitivity", "latency")


def _config(**method) -> PipelineConfig:
    return PipelineConfig(model=ModelSpec(name="builtin:vit-digits"), data=DATA, device="cpu",
                          method=MethodSpec(quantizer="dopq", reconstruct="mse", reconstruct_iters=40, **method))


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [key for key in a if a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key])]
    assert different == [], different[:5]


def _reuse(store: InMemoryStageStore) -> InMemoryStageStore:
    """A store holding ``store``'s shared stages (what a reallocation copies) and its blobs."""
    outputs = {name: store.load(name) for name in SHARED if store.load(name) is not None}
    return InMemoryStageStore(outputs=outputs, blob_dir=store.blob_dir)


def _learned(reconstructed: dict[str, torch.Tensor], plain: dict[str, torch.Tensor]) -> tuple[int, int]:
    """``(input scales, weight code tensors)`` that reconstruction changed against the same job without it."""
    scales = [k for k in reconstructed if ".inputs." in k and k.endswith(".scale")
              and not torch.equal(reconstructed[k], plain[k])]
    codes = [k for k in reconstructed if k.endswith(".weight.codes") and not torch.equal(reconstructed[k], plain[k])]
    return len(scales), len(codes)


@pytest.mark.slow
def test_sim_bundle_survives_an_export_and_a_reallocation_round_trip(tmp_path):
    budgets = {"wbits": 4.5, "abits": 5.0}
    store = InMemoryStageStore()
    first = run_pipeline(_config(budgets=budgets), store=store, output_dir=tmp_path / "first")
    shipped = _tensors(tmp_path / "first")
    plain = run_pipeline(_config(budgets=budgets).model_copy(
        update={"method": _config(budgets=budgets).method.model_copy(update={"reconstruct": "none"})}),
        store=_reuse(store), output_dir=tmp_path / "plain")
    assert plain.allocation == first.allocation
    scales, codes = _learned(shipped, _tensors(tmp_path / "plain"))
    assert scales >= 5 and codes >= 5, (scales, codes)  # reconstruction's values are in the bundle

    exported = run_pipeline(_config(budgets=budgets).model_copy(update={"export_onnx": True}), store=_reuse(store),
                            output_dir=tmp_path / "exported")
    assert (tmp_path / "exported" / "model.onnx").is_file()
    _assert_identical(shipped, _tensors(tmp_path / "exported"))
    assert exported.metrics["quantized"]["kl"] == first.metrics["quantized"]["kl"]

    away = run_pipeline(_config(budgets={"wbits": 3.5, "abits": 4.0}), store=_reuse(store),
                        output_dir=tmp_path / "away")
    assert away.allocation != first.allocation
    back = run_pipeline(_config(budgets=budgets), store=_reuse(store), output_dir=tmp_path / "back")
    assert back.allocation == first.allocation
    _assert_identical(shipped, _tensors(tmp_path / "back"))


@pytest.mark.slow
def test_runtime_bundle_is_the_same_with_measured_sweep_points(tmp_path):
    method = {"target": "onnxruntime-cpu", "budgets": {"wbits": 6.0}}
    store = InMemoryStageStore()
    swept = run_pipeline(_config(**method, sweep=4, sweep_measure=2).model_copy(update={"export_onnx": True}),
                         store=store, output_dir=tmp_path / "swept")
    measured = [p for p in swept.stages["allocate"]["pareto"] if p.get("assignment")]
    assert len(measured) == 2
    report = json.loads((tmp_path / "swept" / "report.json").read_text())
    timed = [p for p in report["pareto"] if p.get("measured_latency_ms") is not None]
    assert len(timed) >= 3 and swept.metrics["deployment"]["checked"]  # two sweep points and the chosen one
    shipped = _tensors(tmp_path / "swept")
    plain = run_pipeline(_config(**method).model_copy(
        update={"method": _config(**method).method.model_copy(update={"reconstruct": "none"})}),
        store=_reuse(store), output_dir=tmp_path / "plain")
    assert plain.allocation == swept.allocation
    scales, codes = _learned(shipped, _tensors(tmp_path / "plain"))
    assert codes >= 5, codes
    assert scales >= 1, scales  # int8 input scales learned (blocks the safeguard kept may keep theirs)

    unswept = run_pipeline(_config(**method), store=_reuse(store), output_dir=tmp_path / "unswept")
    assert unswept.allocation == swept.allocation
    _assert_identical(shipped, _tensors(tmp_path / "unswept"))
