"""Data-free calibration (quant.synthetic and the synthesize stage): the entropy estimate, the patch-token hooks of
ViT, DeiT (class + distillation tokens) and Swin, the seeded Adam generator, the stage in a pipeline run and the
submit-time check. Step counts are tiny; every assertion is on a computed number."""

from __future__ import annotations

import io
import math

import pytest
import timm
import torch
from torch import nn

from quant.config import STAGES, DataSpec, MethodSpec, ModelSpec, PipelineConfig, SyntheticSpec
from quant.models import build_model, model_info
from quant.pipeline import InMemoryStageStore, PipelineInputError, run_pipeline, validate_config
from quant.synthetic import (
    NoAttentionBlocksError,
    PatchTokenCapture,
    SyntheticSettings,
    kde_entropy,
    patch_similarity,
    similarity_entropy,
    synthesize_images,
    token_sites,
)
from quant.synthetic.preview import grid_png

VIT = "builtin:vit-digits"
SWIN = "builtin:swin-digits"


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return build_model(VIT).eval()


def _generate(model, name, count=8, steps=4, seed=0, **settings):
    info = model_info(name) if name.startswith("builtin:") else {"input_size": (3, 32, 32), "mean": (0.5,) * 3,
                                                                  "std": (0.5,) * 3}
    return synthesize_images(model, count, tuple(info["input_size"]), mean=info["mean"], std=info["std"],
                             num_classes=10, seed=seed, settings=SyntheticSettings(steps=steps, **settings))


def _tiny_deit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()


# ---- entropy ------------------------------------------------------------------------------------------------
def test_kde_entropy_matches_the_gaussian_entropy_and_grows_with_spread():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(4, 512, generator=generator)
    wide, narrow = kde_entropy(samples), kde_entropy(0.1 * samples)
    exact = 0.5 * math.log(2 * math.pi * math.e)  # N(0, 1): 1.4189 nats
    assert wide.shape == (4,)
    assert wide.mean().item() == pytest.approx(exact, abs=0.12)
    assert (wide - narrow).mean().item() == pytest.approx(math.log(10), abs=1e-3)  # entropy shifts by log(scale)


def test_patch_similarity_is_cosine_and_entropy_is_per_image():
    tokens = torch.randn(3, 10, 16)
    sim = patch_similarity(tokens)
    assert sim.shape == (3, 10, 10)
    assert torch.allclose(torch.diagonal(sim, dim1=1, dim2=2), torch.ones(3, 10), atol=1e-5)
    assert sim[0, 1, 2].item() == pytest.approx(torch.cosine_similarity(tokens[0, 1], tokens[0, 2], dim=0).item(),
                                                 abs=1e-5)
    entropy = similarity_entropy(tokens, samples=32, generator=torch.Generator().manual_seed(0))
    assert entropy.shape == (3,) and bool(torch.isfinite(entropy).all())
    identical = similarity_entropy(tokens[:, :1].expand(3, 10, 16) + 1e-3 * tokens, samples=32,
                                   generator=torch.Generator().manual_seed(0))
    assert (entropy > identical).all()  # near-identical patches: a concentrated similarity distribution


# ---- hooks --------------------------------------------------------------------------------------------------
def test_vit_sites_drop_the_class_token(vit):
    sites = token_sites(vit)
    assert [s.name for s in sites] == [f"blocks.{i}" for i in range(6)]
    assert {s.prefix for s in sites} == {1}
    with PatchTokenCapture(vit) as capture, torch.no_grad():
        vit(torch.randn(2, 3, 32, 32))
        assert [tuple(t.shape) for t in capture.tokens] == [(2, 64, 96)] * 6  # 8x8 patches, class token dropped
    assert not vit.blocks[0]._forward_hooks  # hooks removed on exit


def test_deit_sites_drop_class_and_distillation_tokens():
    deit = _tiny_deit()
    sites = token_sites(deit)
    assert [s.prefix for s in sites] == [2, 2]
    with PatchTokenCapture(deit) as capture, torch.no_grad():
        deit(torch.randn(2, 3, 32, 32))
        assert [tuple(t.shape) for t in capture.tokens] == [(2, 16, 32)] * 2  # 4x4 patches of 8 pixels


def test_swin_sites_are_the_stages_patch_grids():
    swin = build_model(SWIN).eval()
    sites = token_sites(swin)
    assert [(s.name, s.layout) for s in sites] == [(f"layers.{i}", "grid") for i in range(3)]
    with PatchTokenCapture(swin) as capture, torch.no_grad():
        swin(torch.randn(2, 3, 32, 32))
        assert [tuple(t.shape) for t in capture.tokens] == [(2, 256, 48), (2, 64, 96), (2, 16, 192)]


def test_a_model_without_attention_is_a_typed_error():
    convnet = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(NoAttentionBlocksError) as info:
        token_sites(convnet)
    assert info.value.code == "no_attention_blocks"
    assert isinstance(info.value, PipelineInputError)
    with pytest.raises(NoAttentionBlocksError):
        _generate(convnet, "convnet", steps=1)


# ---- generator ----------------------------------------------------------------------------------------------
def test_generator_raises_entropy_is_seeded_and_keeps_the_pixel_range(vit):
    info = model_info(VIT)
    first = _generate(vit, VIT, steps=6)
    again = _generate(vit, VIT, steps=6)
    other = _generate(vit, VIT, steps=6, seed=1)
    assert first.images.shape == (8, 3, 32, 32) and first.images.dtype == torch.float32
    assert first.labels.shape == (8,) and first.labels.dtype == torch.int64
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.allclose(first.images, other.images)
    entropy = [h["entropy"] for h in first.history]
    assert len(entropy) == 6 and entropy[-1] > entropy[0] + 0.05, entropy
    assert first.history[-1]["cross_entropy"] < first.history[0]["cross_entropy"]
    mean, std = torch.tensor(info["mean"]).view(1, 3, 1, 1), torch.tensor(info["std"]).view(1, 3, 1, 1)
    pixels = first.images * std + mean  # normalised as the model expects: back to [0, 1]
    assert pixels.min().item() >= -1e-5 and pixels.max().item() <= 1 + 1e-5
    with torch.no_grad():
        assert torch.equal(first.labels, vit(first.images).argmax(1))  # labels: the float model's predictions


def test_generator_leaves_the_model_untouched(vit):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    flags = [p.requires_grad for p in vit.parameters()]
    _generate(vit, VIT, count=3, steps=2, batch_size=2)  # two batches
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert [p.requires_grad for p in vit.parameters()] == flags


def test_zero_steps_is_the_seeded_noise(vit):
    noise = _generate(vit, VIT, steps=0)
    assert noise.history == []
    again = _generate(vit, VIT, steps=0)
    assert torch.equal(noise.images, again.images)


@pytest.mark.parametrize("arch", ["deit", "swin"])
def test_generator_runs_on_deit_and_swin(arch):
    model, name = (_tiny_deit(), "deit") if arch == "deit" else (build_model(SWIN).eval(), SWIN)
    result = _generate(model, name, count=4, steps=3)
    assert result.images.shape == (4, 3, 32, 32) and bool(torch.isfinite(result.images).all())
    assert result.history[-1]["entropy"] > result.history[0]["entropy"]


def test_progress_is_reported_every_step(vit):
    calls = []
    info = model_info(VIT)
    synthesize_images(vit, 4, (3, 32, 32), mean=info["mean"], std=info["std"], num_classes=10,
                      settings=SyntheticSettings(steps=3, batch_size=2), progress=lambda f, m: calls.append((f, m)))
    assert [round(f, 4) for f, _ in calls] == [round(i / 6, 4) for i in range(1, 7)]
    assert "step 3/3" in calls[-1][1]


def test_grid_png_is_a_picture_of_the_images():
    from PIL import Image

    images = torch.zeros(5, 3, 8, 8)
    png = grid_png(images, (0.5,) * 3, (0.5,) * 3)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    picture = Image.open(io.BytesIO(png))
    assert picture.size == (3 * 48 + 2 * 2, 2 * 48 + 2)  # 3 columns x 2 rows of 48-pixel tiles, 2-pixel gaps
    assert picture.getpixel((0, 0)) == (128, 128, 128)  # 0 normalised with mean 0.5, std 0.5 is mid grey


# ---- pipeline -----------------------------------------------------------------------------------------------
def _config(model=VIT, steps=2, images=8, **data):
    return PipelineConfig(model=ModelSpec(name=model),
                          data=DataSpec(source="synthetic", num_calibration=images, batch_size=8,
                                        synthetic=SyntheticSpec(steps=steps), **data),
                          method=MethodSpec(quantizer="minmax", wbits=8, abits=8), device="cpu")


def test_synthesize_stage_runs_is_stored_and_reused_on_resume(tmp_path):
    store = InMemoryStageStore(tmp_path / "work")
    progress = []
    result = run_pipeline(_config(), store=store, output_dir=tmp_path / "out",
                          progress=lambda stage, f, m: progress.append(stage))
    stage = result.stages["synthesize"]
    assert stage["count"] == 8 and stage["steps"] == 2 and stage["seed"] == 0
    assert stage["entropy"]["last"] > stage["entropy"]["first"]
    assert store.blob_path(stage["images"]["sha256"]) is not None
    assert "synthesize" in progress and result.timings["synthesize"] > 0  # generation time in the stage timings
    metrics = result.metrics
    assert metrics["quantized"]["top1"] is None and metrics["float"]["top1"] is None
    assert metrics["accuracy"].startswith("not measured") and metrics["images"] == 8
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="synthetic"' in html and "data:image/png;base64," in html
    assert list(STAGES).index("synthesize") == 1

    resumed_store = InMemoryStageStore(tmp_path / "work", outputs={"load": store.outputs["load"],
                                                                    "synthesize": store.outputs["synthesize"]},
                                       blob_dir=store.blob_dir)
    resumed = run_pipeline(_config(), store=resumed_store)
    assert resumed.stages["synthesize"] == stage  # restored from the blob, not generated again
    assert resumed.metrics["quantized"]["kl"] == pytest.approx(metrics["quantized"]["kl"], rel=1e-6)


def test_synthesize_is_skipped_with_real_data_and_evaluation_data_gives_accuracy():
    real = run_pipeline(PipelineConfig(model=ModelSpec(name=VIT), data=DataSpec(num_calibration=16, batch_size=16),
                                       method=MethodSpec(quantizer="minmax", wbits=8, abits=8), device="cpu"))
    assert real.stages["synthesize"]["skipped"] is True and "accuracy" not in real.metrics
    evaluated = run_pipeline(_config(eval_source="builtin:digits"))
    assert evaluated.metrics["quantized"]["top1"] > 80 and evaluated.metrics["images"] == 500


def test_validation_accepts_vits_and_rejects_models_without_attention():
    assert validate_config(_config()) == []
    assert validate_config(_config(SWIN)) == []
    convnet = PipelineConfig(model=ModelSpec(name="resnet18", arch_kwargs={"num_classes": 10}),
                             data=DataSpec(source="synthetic", num_calibration=8), device="cpu")
    with pytest.raises(PipelineInputError) as info:
        validate_config(convnet)
    assert info.value.code == "no_attention_blocks"
    assert "'resnet18' has no attention blocks" in info.value.message and "data.artifact_id" in info.value.message


def test_synthetic_settings_need_the_synthetic_source():
    with pytest.raises(ValueError, match="synthetic settings need source='synthetic'"):
        DataSpec(synthetic=SyntheticSpec(steps=3))
    with pytest.raises(ValueError):
        SyntheticSpec(steps=-1)


def test_cli_data_synthetic(capsys):
    from quant.cli import main as cli_main

    code = cli_main(["quantize", "--model", VIT, "--data", "synthetic", "--num-calib", "4", "--synthetic-steps", "1",
                     "--synthetic-seed", "3", "--method", "minmax", "--wbits", "8", "--abits", "8", "--device", "cpu",
                     "--json"])
    assert code == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["quantized"]["top1"] is None and summary["timings"]["synthesize"] > 0


def test_reconstruction_on_synthetic_images_is_a_warning():
    plain = validate_config(_config())
    assert plain == []
    config = _config().model_copy(update={"method": MethodSpec(quantizer="minmax", reconstruct="mse")})
    warnings = validate_config(config)
    assert [w["code"] for w in warnings] == ["synthetic_reconstruction"]
    assert "set method.reconstruct to 'none' or give real calibration images" in warnings[0]["message"]
