"""FIMA-Q block reconstruction on tiny timm models: refined params as values (learned codes on the entries' grids,
learned input scales, float weights untouched), resume, the safeguard, error reduction, losses, mixed bits."""

import copy
import json
import shutil

import pytest
import timm
import torch
import torch.nn.functional as F

from quant.calibration import calibrate_table
from quant.ptq import calibration_plan, quantize_ptq, reparameterize_for_, wrapped_copy
from quant.quantizers import AffineParams, fake_quant_uniform, params_equal, weight_codes
from quant.quantizers.training import fake_quant_qdrop
from quant.quantizers.weight import dequantize_codes
from quant.reconstruct import LOSSES, discover_blocks, reconstruct_, reconstruct_stage
from quant.reconstruct.blocks import block_quant_layers, run_blocks
from quant.reconstruct.fisher import fisher_snapshot
from quant.wrap import load_params_, quant_layers, uniform_pairs

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


def _tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _params(model) -> dict:
    return {name: layer.params for name, layer in quant_layers(model).items()}


def _same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(params_equal(a[k], b[k]) for k in a)


def _reconstructed_layers(qmodel, report) -> set[str]:
    """Layers of the blocks the run kept reconstructed (not the safeguard's starting entries)."""
    blocks = {b.name: b for b in discover_blocks(qmodel)}
    return {name for r in report.blocks if r.kept == "reconstructed"
            for name in block_quant_layers(qmodel, blocks[r.name])}


def _assert_refined(qmodel, start: dict, float_tensors: dict, report) -> int:
    """The contract of the refined params: the model runs with ``report.params``; every quantized weight of a
    reconstructed block carries learned uint8 codes on its starting entry's grid and computes exactly
    ``(codes - z) * s``; blocks the safeguard kept run with their starting entries; no float tensor changed.
    Returns the number of layers with learned codes."""
    after = _tensors(qmodel)
    assert after.keys() == float_tensors.keys()
    assert all(torch.equal(after[k], float_tensors[k]) for k in after), "a float tensor changed"
    reconstructed = _reconstructed_layers(qmodel, report)
    learned = 0
    for name, layer in quant_layers(qmodel).items():
        params, first = layer.params, start[name]
        assert params_equal(params, report.params[name]), name
        assert (layer.wbits, layer.abits) == (first.wbits, first.abits), name
        assert [type(p) for p in params.inputs] == [type(p) for p in first.inputs], name
        if name not in reconstructed:
            assert params_equal(params, first), f"{name}: the safeguard kept its block, not its entry"
            continue
        weight = params.weight
        if weight is None:
            assert first.weight is None, name
            continue
        codes = weight.codes
        assert codes is not None and codes.dtype == torch.uint8 and codes.shape == layer.weight.shape, name
        assert int(codes.max()) <= 2**weight.bits - 1, name
        assert params_equal(weight.without_codes(), first.weight), f"{name}: the grid moved"
        assert torch.equal(layer.quantized_weight(), dequantize_codes(codes, weight)), f"{name} is off its grid"
        assert torch.equal(layer.quantized_weight(), (codes.float() - weight.zero_point) * weight.scale), name
        learned += 1
    return learned


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
def test_reconstruction_returns_refined_params_and_leaves_float_weights(setup):
    _arch, model, qmodel, images = setup
    q = copy.deepcopy(qmodel)
    start, float_tensors = _params(q), _tensors(q)
    float_weights = {name: layer.weight.clone() for name, layer in quant_layers(q).items() if layer.has_weight}
    report = reconstruct_(q, model, images, loss="fisher_dplr", iters=12, rank=2, batch_size=16, seed=3)
    assert report.complete and len(report.blocks) == len(discover_blocks(q))
    assert report.params.keys() == quant_layers(q).keys()
    for name, layer in quant_layers(q).items():
        if layer.has_weight:
            assert torch.equal(layer.weight, float_weights[name]), f"{name}: the float weight changed"
    reconstructed = _reconstructed_layers(q, report)
    assert len(reconstructed) >= len(start) // 2, [b.kept for b in report.blocks]
    assert _assert_refined(q, start, float_tensors, report) == sum(
        1 for name in reconstructed if start[name].weight is not None)
    # learned codes are not nearest rounding: some weights were rounded the other way
    rounded = [(layer.weight, layer.params.weight) for name, layer in quant_layers(q).items()
               if name in reconstructed and layer.params.weight is not None]
    assert any(not torch.equal(p.codes.float(), weight_codes(w, p.without_codes())) for w, p in rounded)
    assert not q.training and not any(p.requires_grad for p in q.parameters())
    assert any(p.requires_grad for p in model.parameters())  # the caller's flags on the float model are restored
    data = report.to_dict()
    assert "params" not in data
    json.dumps(data)
    assert data["loss"] == "fisher_dplr" and data["rank"] == 2 and data["blocks_done"] == len(report.blocks)
    assert [b["snapshots"] for b in data["blocks"]][:-1] == [2] * (len(report.blocks) - 1)


def test_learned_activation_scales_are_kept(setup):
    _arch, model, qmodel, images = setup
    q = copy.deepcopy(qmodel)
    start = _params(q)
    report = reconstruct_(q, model, images, loss="mse", iters=10, batch_size=16, act_lr=1e-3)
    reconstructed = _reconstructed_layers(q, report)
    moved = total = 0
    for name, layer in quant_layers(q).items():
        for before, after in zip(start[name].inputs, layer.params.inputs, strict=True):
            if not isinstance(before, AffineParams) or name not in reconstructed:
                continue
            total += 1
            assert isinstance(after, AffineParams) and not after.scale.requires_grad
            assert (after.bits, after.granularity) == (before.bits, before.granularity), name
            assert torch.equal(after.zero_point, before.zero_point), name  # only the scales are learned
            moved += not torch.equal(after.scale, before.scale)
    assert total >= 4 and moved >= total // 2, (moved, total)


def test_safeguard_keeps_the_starting_entries_when_training_does_not_help(setup):
    """Learning rates far too large make every trained block worse on its own objective: each block then keeps
    the entries it started from (no learned codes, the calibrated input scales), and says so."""
    _arch, model, qmodel, images = setup
    q = copy.deepcopy(qmodel)
    start = _params(q)
    with torch.no_grad():
        expected = q(images)
    report = reconstruct_(q, model, images, loss="mse", iters=6, batch_size=16, act_lr=1.0, round_lr=1.0)
    trained = [b for b in report.blocks if b.iters > 0]
    assert trained and all(b.kept == "ptq" for b in trained), [(b.name, b.kept) for b in report.blocks]
    for b in trained:
        assert b.objective_after > b.objective_before and b.error_after == b.error_before, b
    assert _same_params(_params(q), start) and _same_params(report.params, start)
    with torch.no_grad():
        assert torch.equal(q(images), expected)


def test_same_seed_same_params_other_seed_differs(setup):
    _arch, model, qmodel, images = setup
    runs, reports = [], []
    for seed in (0, 0, 1):
        q = copy.deepcopy(qmodel)
        report = reconstruct_(q, model, images, loss="mse", iters=8, batch_size=16, seed=seed, max_blocks=2)
        runs.append(_params(q))
        reports.append([b.train_loss for b in report.blocks])
    assert _same_params(runs[0], runs[1])
    assert reports[0] == reports[1]
    # another seed draws other batches and QDrop masks (its params may still coincide when both runs keep the
    # starting entries, so the training losses are compared)
    assert reports[0] != reports[2]


@pytest.mark.parametrize("stop", ["callback", "max_blocks"])
def test_resume_after_interruption_is_bit_identical(setup, tmp_path, stop):
    _arch, model, qmodel, images = setup
    kwargs = {"loss": "fisher_dplr", "iters": 10, "rank": 2, "batch_size": 16, "seed": 7}
    full = copy.deepcopy(qmodel)
    full_report = reconstruct_(full, model, images, workdir=tmp_path / "a", **kwargs)
    with torch.no_grad():
        full_logits = full(images)

    first = copy.deepcopy(qmodel)
    start = _params(first)
    if stop == "callback":
        def progress(fraction, message):
            if message.startswith("block 3/") and "iteration 5/" in message:
                raise KeyboardInterrupt("stop in the middle of block 3")
        with pytest.raises(KeyboardInterrupt):
            reconstruct_(first, model, images, workdir=tmp_path / "b", progress=progress, **kwargs)
        # the interrupted block got its starting entries back (no training values left in the layers)
        block = discover_blocks(first)[2]
        for name in block_quant_layers(first, block):
            assert params_equal(quant_layers(first)[name].params, start[name]), name
    else:
        partial = reconstruct_(first, model, images, workdir=tmp_path / "b", max_blocks=2, **kwargs)
        assert not partial.complete and len(partial.blocks) == 2

    shutil.copytree(tmp_path / "b", tmp_path / "c")
    # resume on a fresh PTQ copy (a restarted job) and on the interrupted object itself
    for resumed_model, folder in ((copy.deepcopy(qmodel), "b"), (first, "c")):
        report = reconstruct_(resumed_model, model, images, workdir=tmp_path / folder, **kwargs)
        assert report.resumed_blocks == 2 and report.complete, report.resume_note
        assert _same_params(_params(resumed_model), _params(full))
        assert _same_params(report.params, full_report.params)
        assert [b.kept for b in report.blocks] == [b.kept for b in full_report.blocks]
        with torch.no_grad():
            assert torch.equal(resumed_model(images), full_logits)

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


def _quantized_at(model, images, assignment_of):
    """A DopQ copy of ``model`` running with the table entries of ``assignment_of(wrapped model)``."""
    qmodel = wrapped_copy(model)
    assignment = assignment_of(qmodel)
    reparameterize_for_(qmodel, images, method="dopq", reference=assignment, batch_size=N_IMAGES)
    plan = calibration_plan(qmodel, method="dopq", pairs={n: (p,) for n, p in assignment.items()},
                            reference=assignment)
    load_params_(qmodel, calibrate_table(qmodel, images, plan, batch_size=N_IMAGES).select(assignment))
    return qmodel


def test_mixed_per_layer_bits(setup):
    _arch, model, _qmodel, images = setup
    mixed = {}

    def assignment(qmodel):
        layers = quant_layers(qmodel)
        names = list(layers)
        linear_names = [n for n in names if layers[n].has_weight]
        mixed.update({linear_names[1]: (2, 8), linear_names[2]: (8, 3), linear_names[3]: (16, 16),
                      names[-2]: (6, 5)})
        return {**uniform_pairs(layers, 4, 4), **mixed}

    q = _quantized_at(model, images, assignment)
    start, float_tensors = _params(q), _tensors(q)
    report = reconstruct_(q, model, images, loss="fisher_dplr", iters=8, rank=2, batch_size=16)
    assert report.complete
    layers = quant_layers(q)
    assert [(layers[n].wbits, layers[n].abits) for n in mixed] == list(mixed.values())
    float_layer = next(n for n, pair in mixed.items() if pair == (16, 16))
    assert layers[float_layer].params.weight is None and layers[float_layer].params.inputs == (None,)
    _assert_refined(q, start, float_tensors, report)
    two_bit = next(n for n, pair in mixed.items() if pair == (2, 8))
    weight = layers[two_bit].params.weight
    assert weight.bits == 2 and int(weight_codes(layers[two_bit].weight, weight).max()) <= 3


def test_pipeline_stage_entry_point(tmp_path):
    from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
    from quant.data import ImageSet

    model = _float_model("vit")
    images = _images(32)

    def ptq():
        # DopQ's reparameterization draws its kappa-scoring tokens from torch's global RNG (quant/reparam.py
        # _Collector): seed it, so each PTQ run (a restarted job) is the same model
        torch.manual_seed(0)
        return quantize_ptq(model, images, wbits=4, abits=4, batch_size=32)[0]

    qmodel = ptq()
    start = _params(qmodel)
    config = PipelineConfig(model=ModelSpec(name="builtin:vit-digits"), data=DataSpec(batch_size=16), seed=2,
                            method=MethodSpec(reconstruct="fisher_lr", reconstruct_iters=5, reconstruct_rank=2))
    calls = []
    out, params = reconstruct_stage(qmodel, model, ImageSet(images), config, tmp_path,
                                    lambda f, m="": calls.append(f))
    assert out["loss"] == "fisher_lr" and out["rank"] == 2 and out["iters"] == 5 and out["complete"]
    assert calls == sorted(calls) and calls[-1] == pytest.approx(1.0)
    json.dumps(out)
    assert _same_params(params, _params(qmodel))
    # the refined params are all a job needs: a fresh PTQ model given them computes what the reconstructed one does
    fresh = ptq()
    assert _same_params(_params(fresh), start)
    load_params_(fresh, params)
    with torch.no_grad():
        assert torch.equal(fresh(images), qmodel(images))
    # and a rerun (a restarted job) takes them from the checkpoints without training again
    out_again, params_again = reconstruct_stage(ptq(), model, ImageSet(images), config, tmp_path)
    assert out_again["resumed_blocks"] == len(out["blocks"]), out_again["resume_note"]
    assert _same_params(params_again, params)


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
    from quant.reconstruct import block

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

    monkeypatch.setattr(block, "maybe_compile", flaky_compile)
    retried = copy.deepcopy(qmodel)
    with caplog.at_level("WARNING"):
        report = reconstruct_(retried, model, images, loss="mse", iters=8, batch_size=16, max_blocks=2,
                              compile="on")
    assert calls["compiled"] == 3
    assert "retrying it eagerly" in caplog.text
    assert [b.train_loss for b in report.blocks] == [b.train_loss for b in eager_report.blocks]
    assert _same_params(_params(eager), _params(retried))
    assert report.params and _same_params(report.params, eager_report.params)
