"""Every recipe x reconstruction loss x uniform/mixed precision x ViT/DeiT/Swin on CUDA (tiny models, few
iterations), the sensitivity pass, bundle reload on the GPU and the pipeline's CUDA defaults.

Run on a GPU machine with ``pytest -m cuda tests/quant/test_cuda.py``; without CUDA every test is skipped with
the reason (they are reported as not run).
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from quant.bundle import load_quantized, save_bundle
from quant.ptq import PTQ_METHODS, quantize_ptq
from quant.reconstruct import reconstruct_
from quant.sensitivity import compute_sensitivity
from quant.wrap import quant_layers, set_bits_

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device: the cuda tests run on a GPU machine with `pytest -m cuda`"),
]

FAMILIES = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2,
                                     "num_classes": 10}),
    "deit": ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
                                       "num_heads": 2, "num_classes": 10}),
    # Swin with a patch-merging stage: its downsample.reduction has no bias (the reparameterization case)
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 24,
                                              "depths": (2, 2), "num_heads": (2, 4), "num_classes": 10}),
}
RECIPES = ("minmax", "repq", "dopq")
LOSSES = ("none", "mse", "fisher_diag", "fisher_lr", "fisher_dplr")
N = 32


def _setup(family: str, recipe: str):
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval().cuda()
    images = F.interpolate(torch.randn(N, 3, 8, 8, generator=torch.Generator().manual_seed(1)), size=32,
                           mode="bilinear").cuda()
    qmodel, _ = quantize_ptq(model, images, method=recipe, wbits=4, abits=4, batch_size=16)
    return model, qmodel, images


def _mixed_bits_(qmodel) -> None:
    choices = [(3, 4), (4, 6), (6, 8), (8, 3)]
    set_bits_(qmodel, {n: choices[i % len(choices)] for i, n in enumerate(quant_layers(qmodel))})


def _on_cuda(module) -> None:
    devices = {t.device.type for t in list(module.parameters()) + list(module.buffers())}
    assert devices == {"cuda"}, devices


@pytest.mark.parametrize("precision", ["uniform", "mixed"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_recipe_loss_precision_family_runs_on_cuda(family, recipe, loss, precision, tmp_path):
    model, qmodel, images = _setup(family, recipe)
    if precision == "mixed":
        table = compute_sensitivity(qmodel, images, None, batch_size=16, alpha_images=8)
        assert all(math.isfinite(v) for d in table.act.values() for v in d.values())  # numbers came back
        _mixed_bits_(qmodel)
    if loss != "none":
        report = reconstruct_(qmodel, model, images, loss=loss, iters=4, rank=2, batch_size=16)
        assert report.complete and report.device.startswith("cuda")
        assert all(torch.isfinite(torch.tensor(b.train_loss)) for b in report.blocks)
    _on_cuda(qmodel)
    with torch.no_grad():
        logits = qmodel(images)
    assert logits.device.type == "cuda" and torch.isfinite(logits).all()
    recipe_spec = PTQ_METHODS[recipe]
    save_bundle(qmodel, tmp_path, model_spec={"name": FAMILIES[family][0], "arch_kwargs": FAMILIES[family][1]},
                recipe={"softmax": recipe_spec.softmax, "minmax": recipe_spec.minmax})
    with torch.no_grad():
        again = load_quantized(tmp_path, device="cuda")(images)
    # same device, same operations: the same top-1 everywhere and logits within 1e-4
    assert torch.equal(again.argmax(1), logits.argmax(1))
    assert torch.allclose(again, logits, atol=1e-4, rtol=0)


def test_reconstruction_is_deterministic_on_cuda():
    model, qmodel, images = _setup("vit", "dopq")
    runs = []
    for _ in range(2):
        q = copy.deepcopy(qmodel)
        reconstruct_(q, model, images, loss="fisher_dplr", iters=6, rank=2, batch_size=16, seed=3, compile="off")
        runs.append({k: v.clone() for k, v in q.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("compile_setting", ["off", "on"])
def test_compiled_step_matches_eager_quality(compile_setting):
    model, qmodel, images = _setup("deit", "dopq")
    report = reconstruct_(qmodel, model, images, loss="fisher_dplr", iters=20, rank=2, batch_size=16,
                          compile=compile_setting)
    assert report.complete
    head = report.blocks[-1]
    assert head.objective_after <= head.objective_before * 1.05


def test_pipeline_on_cuda_reports_the_bundle_metrics(tmp_path):
    from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
    from quant.pipeline import run_pipeline

    cfg = PipelineConfig(model=ModelSpec(name="builtin:vit-digits"), data=DataSpec(num_calibration=64),
                         method=MethodSpec(reconstruct="fisher_dplr", reconstruct_iters=20), device="cuda",
                         preset="paper")
    result = run_pipeline(cfg, output_dir=tmp_path / "b")
    assert result.metrics["evaluated_model"] == "bundle"
    assert result.stages["load"]["device"].startswith("cuda")
    assert result.metrics["quantized"]["top1"] > 80.0
