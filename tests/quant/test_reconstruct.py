"""FIMA-Q block reconstruction on tiny timm models: grid invariant, resume, error reduction, losses, mixed bits."""

import copy
import json
import shutil

import pytest
import timm
import torch
import torch.nn.functional as F

from quant.ptq import quantize_ptq
from quant.quantizers import fake_quant_uniform
from quant.reconstruct import LOSSES, discover_blocks, load_reconstructed_, reconstruct_, reconstruct_stage
from quant.reconstruct.blocks import run_blocks
from quant.reconstruct.fisher import fisher_snapshot
from quant.reconstruct.qdrop import fake_quant_qdrop
from quant.wrap import quant_layers, set_bits_, set_uniform_bits_

torch.set_num_threads(1)  # tiny tensors: one thread is much faster than two on a shared, loaded machine

ARCHS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2,
                                     "num_classes": 10}),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 24,
                                              "depths": (2, 2), "num_heads": (2, 4), "num_classes": 10}),
}
N_IMAGES = 48


def _float_model(arch: str) -> torch.nn.Module:
    name, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():  # a sharper head than timm's tiny init, so that the KL has something to measure
        head = model.head if isinstance(model.head, torch.nn.Linear) else model.head.fc
        head.weight.mul_(50.0)
    return model


def _images(n: int = N_IMAGES) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, 3, 8, 8, generator=g)  # smooth images: upsampled noise
    return F.interpolate(base, size=32, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module", params=list(ARCHS), ids=list(ARCHS))
def setup(request):
    model = _float_model(request.param)
    images = _images()
    qmodel, _ = quantize_ptq(model, images, method="dopq", wbits=4, abits=4, batch_size=N_IMAGES)
    return request.param, model, qmodel, images


@pytest.fixture(scope="module")
def vit_w3a3():
    model = _float_model("vit")
    images = _images()
    qmodel, _ = quantize_ptq(model, images, method="dopq", wbits=3, abits=3, batch_size=N_IMAGES)
    return model, qmodel, images


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_on_grid(qmodel) -> int:
    checked = 0
    for name, layer in quant_layers(qmodel).items():
        if not (layer.has_weight and layer.weight_quantizer.active):
            continue
        wq = layer.weight_quantizer
        codes = wq.integer_weight(layer.weight)
        assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 2**wq.bits - 1, name
        assert torch.equal((codes - wq.zero_point) * wq.scale, layer.weight), f"{name} is off its grid"
        assert torch.equal(wq(layer.weight), layer.weight), f"{name}: fake quantization moves the weight"
        checked += 1
    return checked


def _kl_to_float(qmodel, model, images) -> float:
    with torch.no_grad():
        return F.kl_div(F.log_softmax(qmodel(images), -1), F.log_softmax(model(images), -1), log_target=True,
                        reduction="batchmean").item()


# ---- blocks and building pieces ---------------------------------------------------------------------------
def test_blocks_compose_to_the_model(setup):
    arch, model, qmodel, images = setup
    names = [b.name for b in discover_blocks(qmodel)]
    assert names[0] == "patch_embed" and names[-1] == "head"
    if arch == "swin":
        assert "layers.1.downsample" in names and names.index("layers.1.downsample") == 3
    with torch.no_grad():
        for m in (model, qmodel):
            assert torch.equal(run_blocks(discover_blocks(m), images[:8]), m(images[:8]))
    owned = [n for n in quant_layers(qmodel) if any(b.owns(n) for b in discover_blocks(qmodel))]
    assert owned == list(quant_layers(qmodel))  # every quantization layer belongs to a block


def test_fused_fake_quant_matches_autograd_of_fake_quant_uniform():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 7, 9, generator=g) * 3).requires_grad_()
    scale = torch.tensor(0.37, requires_grad=True)
    zero = torch.tensor(5.0)
    ref = fake_quant_uniform(x, scale, zero, 4)
    ref.backward(torch.ones_like(ref) * torch.linspace(-1, 1, ref.numel()).view_as(ref))
    gx, gs = x.grad.clone(), scale.grad.clone()
    x.grad = scale.grad = None
    out = fake_quant_qdrop(x, scale, zero, 4)
    out.backward(torch.ones_like(out) * torch.linspace(-1, 1, out.numel()).view_as(out))
    assert torch.equal(out, ref)
    assert torch.allclose(x.grad, gx) and torch.allclose(scale.grad, gs, rtol=1e-5)
    keep = (torch.rand(x.shape, generator=g) < 0.5).float()
    mixed = fake_quant_qdrop(x, scale, zero, 4, keep)
    assert torch.equal(mixed, torch.where(keep.bool(), ref, x))
    x.grad = scale.grad = None
    mixed.backward(torch.ones_like(mixed))
    inside = (ref.detach() - x.detach()).abs() <= scale.detach() / 2 + 1e-6
    assert torch.equal(x.grad[~keep.bool()], torch.ones_like(x.grad[~keep.bool()]))  # bypassed: identity
    assert x.grad[keep.bool() & ~inside].abs().sum() == 0  # quantized and clipped: no gradient


def test_tail_only_snapshot_equals_full_model_gradient(setup):
    _arch, model, qmodel, images = setup
    blocks, fblocks = discover_blocks(qmodel), discover_blocks(model)
    i = 1
    with torch.no_grad():
        x_q = run_blocks(blocks[:i], images)
        y_fp = run_blocks(fblocks[: i + 1], images)
        target = F.log_softmax(model(images) / 20.0, -1)
    g, delta = fisher_snapshot(blocks[i].forward, lambda z: run_blocks(fblocks[i + 1:], z), x_q, y_fp, target,
                               temperature=20.0, batch_size=16)
    # reference: a full pass (quantized blocks 0..i, float tail) with the gradient taken at block i's output
    z = run_blocks(blocks[: i + 1], images).detach().requires_grad_()
    kl = F.kl_div(F.log_softmax(run_blocks(fblocks[i + 1:], z) / 20.0, -1), target, log_target=True,
                  reduction="sum")
    (grad,) = torch.autograd.grad(kl, z)
    assert torch.allclose(g, grad.abs().flatten(1).mean(0), rtol=1e-4, atol=1e-12)
    assert torch.allclose(delta, (z - y_fp).abs().flatten(1).mean(0), rtol=1e-5, atol=1e-9)


# ---- the contract of reconstruct_ ---------------------------------------------------------------------------
def test_reconstructed_weights_are_on_the_integer_grid(setup):
    _arch, model, qmodel, images = setup
    q = copy.deepcopy(qmodel)
    report = reconstruct_(q, model, images, loss="fisher_dplr", iters=12, rank=2, batch_size=16, seed=3)
    assert report.complete and len(report.blocks) == len(discover_blocks(q))
    assert _assert_on_grid(q) == sum(1 for layer in quant_layers(q).values() if layer.has_weight)
    assert not q.training and not any(p.requires_grad for p in q.parameters())
    assert all(layer.weight_quantizer.enabled for layer in quant_layers(q).values() if layer.has_weight)
    assert all(a.enabled for layer in quant_layers(q).values() for a in layer.activation_quantizers())
    assert any(p.requires_grad for p in model.parameters())  # the caller's flags on the float model are restored
    data = report.to_dict()
    assert data["loss"] == "fisher_dplr" and data["rank"] == 2 and data["blocks_done"] == len(report.blocks)
    assert [b["snapshots"] for b in data["blocks"]][:-1] == [2] * (len(report.blocks) - 1)


def test_learned_activation_scales_are_kept(setup):
    _arch, model, qmodel, images = setup
    q = copy.deepcopy(qmodel)
    before = {k: v.clone() for k, v in q.state_dict().items() if k.endswith("input_quantizer.scale")}
    reconstruct_(q, model, images, loss="mse", iters=10, batch_size=16, act_lr=1e-3)
    after = {k: v for k, v in q.state_dict().items() if k.endswith("input_quantizer.scale")}
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2


def test_same_seed_same_weights_other_seed_differs(setup):
    _arch, model, qmodel, images = setup
    runs, reports = [], []
    for seed in (0, 0, 1):
        q = copy.deepcopy(qmodel)
        report = reconstruct_(q, model, images, loss="mse", iters=8, batch_size=16, seed=seed, max_blocks=2)
        runs.append(_weights(q))
        reports.append([b.train_loss for b in report.blocks])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert reports[0] == reports[1]
    # another seed draws other batches and QDrop masks (its weights may still coincide when both runs keep the
    # PTQ block, so the training losses are compared)
    assert reports[0] != reports[2]


@pytest.mark.parametrize("stop", ["callback", "max_blocks"])
def test_resume_after_interruption_is_bit_identical(setup, tmp_path, stop):
    _arch, model, qmodel, images = setup
    kwargs = {"loss": "fisher_dplr", "iters": 10, "rank": 2, "batch_size": 16, "seed": 7}
    full = copy.deepcopy(qmodel)
    reconstruct_(full, model, images, workdir=tmp_path / "a", **kwargs)

    first = copy.deepcopy(qmodel)
    if stop == "callback":
        def progress(fraction, message):
            if message.startswith("block 3/") and "iteration 5/" in message:
                raise KeyboardInterrupt("stop in the middle of block 3")
        with pytest.raises(KeyboardInterrupt):
            reconstruct_(first, model, images, workdir=tmp_path / "b", progress=progress, **kwargs)
    else:
        partial = reconstruct_(first, model, images, workdir=tmp_path / "b", max_blocks=2, **kwargs)
        assert not partial.complete and len(partial.blocks) == 2

    shutil.copytree(tmp_path / "b", tmp_path / "c")
    # resume on a fresh PTQ copy (a restarted job) and on the interrupted object itself
    for resumed_model, folder in ((copy.deepcopy(qmodel), "b"), (first, "c")):
        report = reconstruct_(resumed_model, model, images, workdir=tmp_path / folder, **kwargs)
        assert report.resumed_blocks == 2 and report.complete, report.resume_note
        resumed = _weights(resumed_model)
        expected = _weights(full)
        assert resumed.keys() == expected.keys()
        assert all(torch.equal(resumed[k], expected[k]) for k in expected)

    changed = reconstruct_(copy.deepcopy(qmodel), model, images, workdir=tmp_path / "b", **{**kwargs, "seed": 8})
    assert changed.resumed_blocks == 0 and "different settings" in changed.resume_note


def test_reconstruction_lowers_block_errors_and_kl_at_w3a3(vit_w3a3):
    model, qmodel, images = vit_w3a3
    kl_ptq = _kl_to_float(qmodel, model, images)
    results = {}
    for loss in ("mse", "fisher_dplr"):
        q = copy.deepcopy(qmodel)
        report = reconstruct_(q, model, images, loss=loss, iters=60, rank=3, batch_size=16)
        results[loss] = (report, _kl_to_float(q, model, images))
    mse_report, mse_kl = results["mse"]
    # objective_after is the hard-rounded reconstructed block's objective, measured before the PTQ fallback
    # decides which block to keep: these are real improvements, not guaranteed by the fallback
    # (measured: -4 %, -10 %, -12 %, -10 %)
    for block in mse_report.blocks:
        assert block.objective_after < block.objective_before, block
    assert sum(b.objective_after < 0.95 * b.objective_before for b in mse_report.blocks) >= 3
    assert all(b.kept == "reconstructed" for b in mse_report.blocks)
    # whole-model KL to the float model (measured: PTQ 0.215, mse 0.132, fisher_dplr 0.118)
    assert mse_kl < 0.8 * kl_ptq
    assert results["fisher_dplr"][1] < 0.8 * kl_ptq


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_runs(setup, loss):
    arch, model, qmodel, images = setup
    if arch == "swin" and loss != "fisher_dplr":
        pytest.skip("losses are architecture independent; Swin is covered by fisher_dplr")
    q = copy.deepcopy(qmodel)
    report = reconstruct_(q, model, images, loss=loss, iters=6, rank=3, batch_size=16, max_blocks=3)
    assert len(report.blocks) == 3 and all(b.loss == loss for b in report.blocks)
    expected_snapshots = 3 if loss != "mse" else 0
    assert [b.snapshots for b in report.blocks] == [expected_snapshots] * 3
    assert all(torch.isfinite(torch.tensor(b.train_loss)) for b in report.blocks)


def test_mixed_per_layer_bits(setup):
    _arch, model, qmodel, images = setup
    q = copy.deepcopy(qmodel)
    names = list(quant_layers(q))
    linear_names = [n for n in names if quant_layers(q)[n].has_weight]
    mixed = {linear_names[1]: (2, 8), linear_names[2]: (8, 3), linear_names[3]: (16, 16), names[-2]: (6, 5)}
    set_bits_(q, mixed)
    float_weight = quant_layers(q)[linear_names[3]].weight.clone()
    report = reconstruct_(q, model, images, loss="fisher_dplr", iters=8, rank=2, batch_size=16)
    assert report.complete
    layers = quant_layers(q)
    assert [layers[n].wbits for n in mixed] == [b[0] for b in mixed.values()]
    assert torch.equal(layers[linear_names[3]].weight, float_weight)  # a float layer is not rounded
    assert _assert_on_grid(q) == sum(1 for layer in layers.values() if layer.has_weight and layer.wbits < 16)
    codes = layers[linear_names[1]].weight_quantizer.integer_weight(layers[linear_names[1]].weight)
    assert codes.max() <= 3


def test_pipeline_stage_entry_point(tmp_path):
    from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
    from quant.data import ImageSet

    model = _float_model("vit")
    images = _images(32)
    qmodel, _ = quantize_ptq(model, images, wbits=4, abits=4, batch_size=32)
    set_uniform_bits_(qmodel, 4, 4, head_bits=8)
    config = PipelineConfig(model=ModelSpec(name="builtin:vit-digits"), data=DataSpec(batch_size=16), seed=2,
                            method=MethodSpec(reconstruct="fisher_lr", reconstruct_iters=5, reconstruct_rank=2))
    calls = []
    out = reconstruct_stage(qmodel, model, ImageSet(images), config, tmp_path, lambda f, m="": calls.append(f))
    assert out["loss"] == "fisher_lr" and out["rank"] == 2 and out["iters"] == 5 and out["complete"]
    assert calls == sorted(calls) and calls[-1] == pytest.approx(1.0)
    json.dumps(out)
    fresh, _ = quantize_ptq(model, images, wbits=4, abits=4, batch_size=32)
    set_uniform_bits_(fresh, 4, 4, head_bits=8)
    assert load_reconstructed_(fresh, tmp_path) == len(out["blocks"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), qmodel.state_dict().values()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "l2"}, "loss must be one of"),
        ({"iters": 0}, "iters must be a positive integer"),
        ({"rank": 0}, "rank must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"drop_prob": 0.0}, "drop_prob must be in (0, 1]"),
        ({"max_blocks": -1}, "max_blocks must be None or an integer >= 0"),
    ],
)
def test_invalid_arguments(setup, kwargs, message):
    _arch, model, qmodel, images = setup
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        reconstruct_(copy.deepcopy(qmodel), model, images, **kwargs)


def test_unsupported_architecture_is_refused():
    with pytest.raises(ValueError, match="supports timm VisionTransformer"):
        discover_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_compiled_step_failing_after_its_first_call_retrains_the_block_eagerly(setup, monkeypatch, caplog):
    """A compiled step that breaks later (e.g. a CUDA-graph replay in backward) must not fail the job: the block
    is put back as it was and trained again eagerly, giving exactly the eager result."""
    from quant.reconstruct import engine

    _arch, model, qmodel, images = setup
    eager = copy.deepcopy(qmodel)
    eager_report = reconstruct_(eager, model, images, loss="mse", iters=8, batch_size=16, max_blocks=2,
                                compile="off")
    calls = {"compiled": 0}

    def flaky_compile(fn, device, setting):
        if setting == "off":
            return fn

        def step(*args):
            calls["compiled"] += 1
            if calls["compiled"] == 3:  # fails mid-block, after some optimiser steps changed the weights
                raise RuntimeError("CUDA graph replay failed")
            return fn(*args)
        return step

    monkeypatch.setattr(engine, "_maybe_compile", flaky_compile)
    retried = copy.deepcopy(qmodel)
    with caplog.at_level("WARNING"):
        report = reconstruct_(retried, model, images, loss="mse", iters=8, batch_size=16, max_blocks=2,
                              compile="on")
    assert calls["compiled"] == 3
    assert "retrying it eagerly" in caplog.text
    assert [b.train_loss for b in report.blocks] == [b.train_loss for b in eager_report.blocks]
    eager_w, retried_w = _weights(eager), _weights(retried)
    assert all(torch.equal(eager_w[k], retried_w[k]) for k in eager_w)
