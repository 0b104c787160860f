"""Every recipe x reconstruction loss x uniform/mixed precision x ViT/DeiT/Swin on CUDA (tiny models, few
iterations): the parameter table, the sensitivity pass, reconstruction, bundle reload on the GPU and the pipeline's
CUDA defaults; every tensor (parameters, buffers and every layer's params) stays on the model's device.

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
from quant.calibration import calibrate_table
from quant.ptq import PTQ_METHODS, calibration_plan, quantize_table, reparameterize_for_, wrapped_copy
from quant.quantizers import map_tensors, params_equal
from quant.reconstruct import reconstruct_
from quant.sensitivity import compute_sensitivity
from quant.wrap import load_params_, quant_layers, uniform_pairs

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
#: the mixed assignment cycles through these pairs (layers without weights take wbits 16)
MIXED = ((3, 4), (4, 6), (6, 8), (8, 3))
N = 32


def _float_model(family: str):
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval().cuda()
    images = F.interpolate(torch.randn(N, 3, 8, 8, generator=torch.Generator().manual_seed(1)), size=32,
                           mode="bilinear").cuda()
    return model, images


def _setup(family: str, recipe: str, precision: str = "uniform"):
    """(float model, qmodel running with its assignment, table, assignment, images), all on CUDA. Uniform: W4A4
    (head 8); mixed: a table of each layer's mixed pair and its reference pair, the model at the mixed pairs."""
    model, images = _float_model(family)
    if precision == "uniform":
        qmodel, table, pairs, _ = quantize_table(model, images, method=recipe, wbits=4, abits=4, batch_size=16)
        return model, qmodel, table, pairs, images
    qmodel = wrapped_copy(model)
    layers = quant_layers(qmodel)
    reference = uniform_pairs(layers, 4, 4)
    reparameterize_for_(qmodel, images, method=recipe, reference=reference, batch_size=16)
    assignment = {n: (MIXED[i % len(MIXED)][0] if layer.has_weight else 16, MIXED[i % len(MIXED)][1])
                  for i, (n, layer) in enumerate(layers.items())}
    plan = calibration_plan(qmodel, method=recipe, pairs={n: [p] for n, p in assignment.items()},
                            reference=reference)
    table = calibrate_table(qmodel, images, plan, batch_size=16)
    load_params_(qmodel, table.select(reference))
    return model, qmodel, table, assignment, images


def _devices(params) -> set[str]:
    seen: set[str] = set()
    map_tensors(params, lambda t: seen.add(t.device.type) or t)
    return seen


def _on_cuda(module) -> None:
    devices = {t.device.type for t in list(module.parameters()) + list(module.buffers())}
    for layer in quant_layers(module).values():
        devices |= _devices(layer.params)
    assert devices == {"cuda"}, devices


@pytest.mark.parametrize("precision", ["uniform", "mixed"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_recipe_loss_precision_family_runs_on_cuda(family, recipe, loss, precision, tmp_path):
    model, qmodel, table, assignment, images = _setup(family, recipe, precision)
    assert all(_devices(entry) <= {"cuda"} for name in table.layers() for entry in
               (table.entry(name, pair) for pair in table.pairs(name)))
    if precision == "mixed":
        sens = compute_sensitivity(qmodel, table, images, None, batch_size=16, alpha_images=8)
        omegas = [v for d in (*sens.act.values(), *sens.weight.values()) for v in d.values()]
        assert omegas and all(math.isfinite(v) and v >= 0 for v in omegas)  # numbers came back
        load_params_(qmodel, table.select(assignment))
    if loss != "none":
        report = reconstruct_(qmodel, model, images, loss=loss, iters=4, rank=2, batch_size=16)
        assert report.complete and report.device.startswith("cuda")
        assert all(math.isfinite(b.train_loss) for b in report.blocks)
        assert report.params and all(_devices(p) == {"cuda"} for p in report.params.values())
        for name, params in report.params.items():  # the model runs with the refined params it reports
            assert params_equal(quant_layers(qmodel)[name].params, params), name
    _on_cuda(qmodel)
    with torch.no_grad():
        logits = qmodel(images)
    assert logits.device.type == "cuda" and torch.isfinite(logits).all()
    recipe_spec = PTQ_METHODS[recipe]
    save_bundle(qmodel, tmp_path, model_spec={"name": FAMILIES[family][0], "arch_kwargs": FAMILIES[family][1]},
                recipe={"softmax": recipe_spec.softmax, "minmax": recipe_spec.minmax})
    loaded = load_quantized(tmp_path, device="cuda")
    _on_cuda(loaded)
    with torch.no_grad():
        again = loaded(images)
    # same device, same operations: the same top-1 everywhere and logits within 1e-4
    assert torch.equal(again.argmax(1), logits.argmax(1))
    assert torch.allclose(again, logits, atol=1e-4, rtol=0)


def test_reconstruction_is_deterministic_on_cuda():
    model, qmodel, _, _, images = _setup("vit", "dopq")
    runs = []
    for _ in range(2):
        q = copy.deepcopy(qmodel)
        report = reconstruct_(q, model, images, loss="fisher_dplr", iters=6, rank=2, batch_size=16, seed=3,
                              compile="off")
        with torch.no_grad():
            runs.append((report.params, q(images)))
    (params_a, logits_a), (params_b, logits_b) = runs
    assert params_a.keys() == params_b.keys() and params_a
    assert all(params_equal(params_a[name], params_b[name]) for name in params_a)
    assert torch.equal(logits_a, logits_b)


@pytest.mark.parametrize("compile_setting", ["off", "on"])
def test_compiled_step_matches_eager_quality(compile_setting):
    model, qmodel, _, _, images = _setup("deit", "dopq")
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
