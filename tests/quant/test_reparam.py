"""Post-LayerNorm reparameterization keeps the float function and lowers quantization error; folds are values."""

import copy

import pytest
import timm
import torch

from quant.calibration import calibrate_table
from quant.ptq import calibration_plan
from quant.reparam import KAPPA_GRID, apply_fold_, find_layernorm_pairs, plan_folds, reparameterize_
from quant.wrap import load_params_, quant_layers, uniform_pairs, wrap_model_


def _model_with_outlier_channels(name: str, outlier_scale: float = 25.0, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():  # LayerNorm outputs with a few huge channels, as in trained ViTs
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[:3] *= outlier_scale
                module.bias[3:6] += 4.0
    return model


CASES = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "depth": 2, "num_classes": 10}),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 2, "window_size": 4,
                                              "embed_dim": 24, "depths": (2, 2), "num_heads": (2, 4),
                                              "num_classes": 10}),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("mode", ["mean", "mad"])
def test_reparameterization_preserves_float_output(case, mode):
    name, kwargs = CASES[case]
    model = wrap_model_(_model_with_outlier_channels(name, **kwargs))  # wrapped layers start at float params
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        reports = reparameterize_(model, [x], mode=mode)
        after = model(x)
    assert len(reports) == len(find_layernorm_pairs(model)) > 0
    assert sum(r.rescaled_channels for r in reports) > 0  # the outlier channels were rescaled somewhere
    assert (after - before).abs().max().item() < 1e-4 * max(1.0, before.abs().max().item())


def test_pairs_cover_qkv_fc1_and_patch_merging():
    name, kwargs = CASES["swin"]
    pairs = {lin: norm for norm, lin in find_layernorm_pairs(wrap_model_(timm.create_model(name, **kwargs)))}
    assert pairs["layers.0.blocks.0.attn.qkv"] == "layers.0.blocks.0.norm1"
    assert pairs["layers.0.blocks.1.mlp.fc1"] == "layers.0.blocks.1.norm2"
    assert pairs["layers.1.downsample.reduction"] == "layers.1.downsample.norm"


def test_plan_folds_is_a_value_and_applying_it_is_reparameterize():
    """``plan_folds`` leaves the model unchanged; folding its folds one by one gives exactly the model that
    ``reparameterize_`` makes (the swin case: a bias-free patch-merging reduction gets a bias)."""
    name, kwargs = CASES["swin"]
    model = wrap_model_(_model_with_outlier_channels(name, **kwargs))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    folds = plan_folds(model, [x], mode="mad")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert set(model.state_dict()) == set(state)
    for fold in folds:
        apply_fold_(model, fold)
    other = wrap_model_(_model_with_outlier_channels(name, **kwargs))
    torch.manual_seed(0)
    reports = reparameterize_(other, [x], mode="mad")
    assert [f.report for f in folds] == reports
    assert model.state_dict().keys() == other.state_dict().keys()
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    assert model.get_submodule("layers.1.downsample.reduction").bias is not None


def _w4a4_error(model, x, mode):
    """Output MSE against float of ``model`` (optionally reparameterized) with W4A4 fast-fit params (TanQ
    post-softmax, like dopq without the search)."""
    model = copy.deepcopy(model)
    pairs = uniform_pairs(quant_layers(model), 4, 4, head_bits=None)
    with torch.no_grad():
        reference = model(x)
        if mode is not None:  # kappa candidates scored at the pairs the model will run with
            torch.manual_seed(0)
            reparameterize_(model, list(x.split(4)), mode=mode, reference=pairs)
        plan = calibration_plan(model, method="dopq", pairs={n: [p] for n, p in pairs.items()}, reference=pairs,
                                range_search="minmax")
        load_params_(model, calibrate_table(model, x, plan, batch_size=4).select(pairs))  # 64k-value samples
        return (model(x) - reference).pow(2).mean().item()


def test_reparameterization_trade_off_mean_vs_mad():
    """Mild outliers: both folds beat no reparameterization. Extreme outliers: full equalization (RepQ mean)
    blows up the weight columns and loses badly to doing nothing; MAD-guided scaling stays close to the better
    option (it scores each layer locally, so it need not beat doing nothing on the whole model)."""
    name, kwargs = CASES["vit"]
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mild = wrap_model_(_model_with_outlier_channels(name, outlier_scale=5.0, **kwargs))
    plain, mean, mad = (_w4a4_error(mild, x, mode) for mode in (None, "mean", "mad"))
    assert mean < 0.8 * plain and mad < 0.9 * plain, (plain, mean, mad)
    extreme = wrap_model_(_model_with_outlier_channels(name, outlier_scale=25.0, **kwargs))
    plain, mean, mad = (_w4a4_error(extreme, x, mode) for mode in (None, "mean", "mad"))
    assert mean > 2 * plain, (plain, mean, mad)
    assert mad < 0.35 * mean, (plain, mean, mad)


def test_mad_fold_never_scores_worse_than_any_single_kappa():
    """What MOSF guarantees: each kappa of the grid, kappa = inf (no channel rescaled) included, is a candidate, so
    each folded layer's output error on the calibration tokens is at most that of any single kappa, and the
    reported error is the error of the chosen kappa. (Every call samples the same tokens: same seed.)"""
    name, kwargs = CASES["vit"]
    model = wrap_model_(_model_with_outlier_channels(name, outlier_scale=25.0, **kwargs))
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    batches = list(x.split(4))  # 8 batches: the fold scores 1024 sampled tokens

    def folds(grid):
        torch.manual_seed(0)
        return {f.report.linear: f.report for f in plan_folds(model, batches, mode="mad", kappa_grid=grid,
                                                                reference=uniform_pairs(quant_layers(model), 4, 4))}

    chosen = folds(KAPPA_GRID)
    single = {kappa: folds((kappa,)) for kappa in KAPPA_GRID}
    assert any(r.kappa != float("inf") for r in chosen.values())  # the outlier channels are rescaled somewhere
    for linear, report in chosen.items():
        errors = {kappa: single[kappa][linear].output_mse for kappa in KAPPA_GRID}
        assert report.output_mse == min(errors.values()), (report, errors)
        assert report.output_mse == errors[report.kappa]
        assert report.output_mse <= errors[float("inf")]
        if report.kappa == float("inf"):
            assert report.rescaled_channels == 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'mean' or 'mad'"):
        reparameterize_(torch.nn.Linear(2, 2), [], mode="median")
