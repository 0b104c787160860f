"""The whole pipeline on the built-in ViT: uniform PTQ, mixed precision, stage reuse, input errors, CLI."""

import json

import pytest
import torch

from quant.cli import main as cli_main
from quant.config import STAGES, DataSpec, MethodSpec, ModelSpec, PipelineConfig
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
    assert set(result.stages) == set(STAGES)
    assert result.stages["latency"]["skipped"] is True  # target sim: nothing to measure


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
    with pytest.raises(PipelineInputError, match=r"images have shape \[3, 24, 24\] per image but the model expects \[3, 32, 32\]") as info:
        validate_config(config(data=DataSpec(source=str(path))))
    assert info.value.code == "invalid_data"


def test_cli_json_output(capsys, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the work folder goes here and must be removed
    code = cli_main(["quantize", "--model", "builtin:vit-digits", "--wbits", "4", "--abits", "4", "--method",
                     "repq", "--num-calib", "32", "--json"])
    assert code == 0
    assert list(tmp_path.iterdir()) == []
    out = json.loads(capsys.readouterr().out)
    # test cross-entropy (nats/image) with the built-in labels; the float ViT is ~99 % accurate on digits
    assert 0.0 < out["float"]["cross_entropy"] < 0.2
    assert out["quantized"]["cross_entropy"] > 0.0
    # timings.load is the real load (model + weights + images), start-up is counted separately
    assert out["timings"]["load"] > 0.01
    assert out["timings"]["startup"] > 0.0
    for key in ("float", "quantized", "bits", "timings", "allocation", "budgets"):
        assert key in out
    assert {"top1", "kl", "agreement"} <= set(out["quantized"])
    assert {"weights_avg", "activations_avg"} <= set(out["bits"])
    # measured (repq W4A4, 32 calibration images, output-aware range search): top-1 98.2 %, KL 0.0051, CE 0.130;
    # the fast calibration (--range-search minmax) gives KL 0.012, so the KL bound catches a calibration regression
    assert abs(out["quantized"]["top1"] - 98.2) <= 1.5
    assert out["quantized"]["kl"] < 0.009
    assert out["float"]["cross_entropy"] < out["quantized"]["cross_entropy"] < 0.16
    assert out["timings"]["evaluate"] > 0


def test_cli_reports_bad_input_with_exit_code_2(capsys):
    code = cli_main(["quantize", "--model", "resnet_imaginary", "--weights", "w.safetensors"])
    assert code == 2
    assert "unknown architecture 'resnet_imaginary'" in capsys.readouterr().err


def test_stages_do_not_import_the_pipeline():
    """Layers stay one-way: the pipeline imports its stages, never the reverse (errors live in quant.errors)."""
    import ast
    from pathlib import Path

    import quant
    import quant.errors

    root = Path(quant.__file__).parent
    files = [root / f"{m}.py" for m in ("validation", "data", "imageset", "digits", "image_folder", "layer_costs",
                                        "errors", "choices", "ptq")]
    for package in ("allocation", "sensitivity", "calibration", "quantizers", "reconstruct", "bundle"):
        files += sorted((root / package).glob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(m == "pipeline" or m.endswith(".pipeline") or ".pipeline." in m for m in imported), path
    assert PipelineInputError is quant.errors.PipelineInputError  # re-exported for compatibility


def test_validation_profile_on_meta_matches_the_real_model():
    """Submit-time checks use a per-architecture profile built on the meta device: same costs as the real model."""
    from quant.layer_costs import profile_layers
    from quant.models import build_model
    from quant.validation import architecture
    from quant.wrap import wrap_model_

    info = architecture("builtin:swin-digits", {})
    assert architecture("builtin:swin-digits", {}) is info  # cached per (name, arch_kwargs)
    real = profile_layers(wrap_model_(build_model("builtin:swin-digits")), info.input_shape)
    assert info.profiles == real
    assert {key: shape for key, (shape, _) in info.state.items()} == {
        key: tuple(value.shape) for key, value in build_model("builtin:swin-digits").state_dict().items()
    }


def test_job_metrics_are_those_of_the_reloaded_bundle(tmp_path):
    from quant.bundle import load_quantized
    from quant.data import load_dataset
    from quant.evaluate import compare_logits, predict_logits
    from quant.models import build_model

    cfg = config(quantizer="dopq", wbits=4, abits=4, reconstruct="mse", reconstruct_iters=3)
    result = run_pipeline(cfg, output_dir=tmp_path / "bundle")
    metrics = result.metrics
    assert metrics["evaluated_model"] == "bundle"
    # a user reloads the artifact on the same device: the same top-1 exactly, logits within 1e-5
    model = load_quantized(tmp_path / "bundle", device="cpu")
    test = load_dataset("builtin:digits", split="test")
    logits = predict_logits(model, test.images, 64)
    float_logits = predict_logits(build_model(cfg.model.name), test.images, 64)
    again = compare_logits(float_logits, logits, test.labels)
    assert again["top1"] == metrics["quantized"]["top1"]
    assert again["kl"] == pytest.approx(metrics["quantized"]["kl"], abs=1e-6)


def test_presets_fill_only_settings_the_job_did_not_give():
    from quant.presets import resolve_preset

    base = PipelineConfig(model=ModelSpec(name="builtin:vit-digits"))
    quick = resolve_preset(base, "cpu")
    assert quick.preset == "quick" and quick.method.reconstruct == "none" and quick.data.num_calibration == 256
    paper = resolve_preset(base, "cuda")  # auto on a CUDA worker
    assert paper.preset == "paper"
    assert (paper.method.reconstruct, paper.method.reconstruct_iters, paper.method.reconstruct_rank,
            paper.method.iterative_rounds, paper.data.num_calibration) == ("fisher_dplr", 20000, 5, 3, 1024)
    explicit = PipelineConfig(model=ModelSpec(name="builtin:vit-digits"), preset="paper",
                              method=MethodSpec(reconstruct_iters=300, reconstruct="mse"),
                              data=DataSpec(num_calibration=64))
    mixed = resolve_preset(explicit, "cpu")
    assert (mixed.method.reconstruct, mixed.method.reconstruct_iters, mixed.method.iterative_rounds,
            mixed.data.num_calibration) == ("mse", 300, 3, 64)


def test_cli_preset_and_explicit_options():
    import argparse

    from quant.cli import _build_config, add_quantize_parser

    parser = argparse.ArgumentParser()
    add_quantize_parser(parser.add_subparsers())
    args = parser.parse_args(["quantize", "--model", "builtin:vit-digits", "--preset", "paper", "--iters", "100"])
    cfg = _build_config(args)
    assert cfg.preset == "paper"
    assert cfg.method.model_fields_set >= {"reconstruct_iters"}
    assert "reconstruct" not in cfg.method.model_fields_set and "num_calibration" not in cfg.data.model_fields_set
