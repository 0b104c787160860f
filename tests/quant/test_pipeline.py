"""The whole pipeline on the built-in ViT: uniform PTQ, mixed precision, stage reuse, input errors, CLI."""

import json

import pytest
import torch

from quant.cli import main as cli_main
from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
from quant.pipeline import InMemoryStageStore, PipelineInputError, run_pipeline, validate_config

FAST_DATA = DataSpec(num_calibration=64, batch_size=64)


def config(model="builtin:vit-digits", data=FAST_DATA, **method):
    return PipelineConfig(model=ModelSpec(name=model), data=data, method=MethodSpec(**method), device="cpu")


@pytest.mark.parametrize("model", ["builtin:vit-digits", "builtin:swin-digits"], ids=["vit", "swin"])
def test_w8a8_minmax_within_half_a_point_of_float(model):
    result = run_pipeline(config(model, quantizer="minmax", wbits=8, abits=8))
    metrics = result.metrics
    assert metrics["images"] == 500
    assert metrics["quantized"]["top1"] >= metrics["float"]["top1"] - 0.5
    assert metrics["quantized"]["agreement"] >= 98.0
    assert metrics["bits"]["weights_avg"] == pytest.approx(8.0)
    assert set(result.stages) == {"load", "sensitivity", "allocate", "reconstruct", "evaluate", "export"}


def test_mixed_precision_meets_budgets_and_reuses_sensitivity(monkeypatch):
    store = InMemoryStageStore()
    budgets = {"wbits": 4.5, "abits": 5.0}
    first = run_pipeline(config(quantizer="dopq", budgets=budgets), store=store)
    assert first.metrics["bits"]["weights_avg"] <= 4.5 + 1e-6
    assert first.metrics["bits"]["activations_avg"] <= 5.0 + 1e-6
    assert first.budgets["wbits"]["used"] == pytest.approx(first.metrics["bits"]["weights_avg"], rel=1e-6)
    assert len({(v["wbits"], v["abits"]) for v in first.allocation.values()}) > 2
    assert first.allocation["head"] == {"wbits": 8, "abits": 8}
    assert first.sensitivity is not None and "table" in first.sensitivity

    import quant.sensitivity

    def refuse(*_args, **_kwargs):
        raise AssertionError("sensitivity must not be recomputed")

    monkeypatch.setattr(quant.sensitivity, "sensitivity_stage", refuse)
    reuse = InMemoryStageStore(outputs={"sensitivity": store.load("sensitivity")})
    second = run_pipeline(config(quantizer="dopq", budgets={"wbits": 3.5, "abits": 4.0}), store=reuse)
    assert second.metrics["bits"]["weights_avg"] <= 3.5 + 1e-6
    assert second.metrics["bits"]["weights_avg"] < first.metrics["bits"]["weights_avg"]


@pytest.mark.parametrize(
    ("cfg", "code", "message"),
    [
        (config("vit_nonexistent_patch16"), "unknown_architecture", "unknown architecture 'vit_nonexistent_patch16'"),
        (config(budgets={"wbits": 1.5}), "infeasible_budget", "cannot be met"),
        (config(fixed_layers={"blocks.99.attn.qkv": (4, 4)}), "unknown_layer", "fixed layer 'blocks.99.attn.qkv'"),
        (config(candidate_wbits=(4, 7)), "invalid_bits", "candidate weight bits 7"),
    ],
    ids=["unknown-arch", "infeasible-budget", "unknown-fixed-layer", "bad-candidate-bits"],
)
def test_bad_input_raises_pipeline_input_error(cfg, code, message):
    with pytest.raises(PipelineInputError, match=message) as info:
        validate_config(cfg)
    assert info.value.code == code
    if code == "infeasible_budget":
        minimum = info.value.details["min_achievable"]["wbits"]
        assert 2.0 < minimum < 2.5  # 2-bit everywhere but the 8-bit patch embedding and head


def test_images_of_wrong_shape_are_refused(tmp_path):
    from quant.data import ImageSet, save_imageset

    path = tmp_path / "images.safetensors"
    save_imageset(path, ImageSet(torch.zeros(4, 3, 24, 24), None))
    with pytest.raises(PipelineInputError, match=r"images are 24x24 but .builtin:vit-digits. expects 32x32") as info:
        validate_config(config(data=DataSpec(source=str(path))))
    assert info.value.code == "invalid_data"


def test_cli_json_output(capsys):
    code = cli_main(["quantize", "--model", "builtin:vit-digits", "--wbits", "4", "--abits", "4", "--method",
                     "repq", "--num-calib", "32", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("float", "quantized", "bits", "timings", "allocation", "budgets"):
        assert key in out
    assert {"top1", "kl", "agreement"} <= set(out["quantized"])
    assert {"weights_avg", "activations_avg"} <= set(out["bits"])
    assert out["quantized"]["top1"] > 50.0
    assert out["timings"]["evaluate"] > 0


def test_cli_reports_bad_input_with_exit_code_2(capsys):
    code = cli_main(["quantize", "--model", "resnet_imaginary", "--weights", "w.safetensors"])
    assert code == 2
    assert "unknown architecture 'resnet_imaginary'" in capsys.readouterr().err
