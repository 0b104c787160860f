"""TanQ vs log2 on post-softmax attention maps taken from the built-in ViT (real, trained attention), and the
post-softmax entries calibration puts in a job's table."""

from dataclasses import replace

import pytest
import torch

from quant.calibration import SearchSettings, calibrate_table
from quant.data import load_dataset
from quant.models import build_model
from quant.ptq import calibration_plan, wrapped_copy
from quant.quantizers import (
    AffineParams,
    Log2Params,
    TanQParams,
    fake_quant,
    fit_log2,
    fit_tanq,
    params_equal,
)
from quant.wrap import quant_layers, uniform_pairs


@pytest.fixture(scope="module")
def vit():
    return build_model("builtin:vit-digits"), load_dataset("builtin:digits", split="calib").images[:16]


def _attention_inputs(model, images):
    """(maps [B,H,N,N], values [B,H,N,d]) entering ``attn @ v`` of every block of the wrapped (float) model."""
    pairs = []
    hooks = [layer.register_forward_pre_hook(lambda _m, inputs: pairs.append(tuple(t.detach() for t in inputs)))
             for name, layer in quant_layers(model).items() if name.endswith("matmul_av")]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return pairs


@pytest.fixture(scope="module")
def attention_pairs(vit):
    model, images = vit
    return _attention_inputs(wrapped_copy(model), images)


@pytest.mark.parametrize("bits", [3, 4, 6], ids=lambda b: f"{b}bit")
def test_tanq_beats_log2_on_real_attention(attention_pairs, bits):
    tanq_map = log2_map = tanq_out = log2_out = 0.0
    for all_maps, all_values in attention_pairs:
        # fit on the first 8 images' attention, score on the other 8 (held out)
        fit_maps, fit_values, maps, values = all_maps[:8], all_values[:8], all_maps[8:], all_values[8:]
        flat = fit_maps.flatten()
        # a value sample with the exact extremes, as calibration's capture keeps it
        pick = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:16384]
        sample = torch.cat([flat[pick], torch.stack([flat.min(), flat.max()])])
        tanq = fit_tanq(sample, bits, fit_maps[:2], fit_values[:2])  # objective: maps @ values
        tanq_for_map = fit_tanq(sample, bits)  # objective: the map values themselves
        log2 = fit_log2(sample, bits)
        tanq_map += (fake_quant(maps, tanq_for_map) - maps).pow(2).mean().item()
        log2_map += (fake_quant(maps, log2) - maps).pow(2).mean().item()
        reference = maps @ values
        tanq_out += (fake_quant(maps, tanq) @ values - reference).pow(2).mean().item()
        log2_out += (fake_quant(maps, log2) @ values - reference).pow(2).mean().item()
    # Scored on held-out maps. 3 bits: 8 levels; TanQ's searched centre makes it log-like and it is on par with
    # log2. From 4 bits on, log2's coarse top (nothing between 1/2 and 1) leaves it far behind.
    margin = 1.15 if bits == 3 else 0.5
    assert tanq_out < margin * log2_out  # error of what the next layer sees (default objective)
    assert tanq_map < (1.25 if bits == 3 else 0.5) * log2_map  # error of the map itself (map objective)


@pytest.mark.parametrize(("method", "kind"), [("dopq", TanQParams), ("repq", Log2Params), ("minmax", AffineParams)])
def test_table_holds_the_recipe_post_softmax_quantizer_at_every_width(vit, method, kind):
    """The post-softmax operand of ``attn @ v`` gets the recipe's quantizer at each input width; v stays uniform;
    TanQ is fitted on ``maps @ values`` (the first calibration images' products)."""
    model, images = vit
    images = images[:2]  # one batch: the captured products are these two images
    qmodel = wrapped_copy(model)
    layers = quant_layers(qmodel)
    name = "blocks.0.attn.matmul_av"
    plan = calibration_plan(qmodel, method=method, pairs={name: [(16, 3), (16, 4), (16, 6)]},
                            reference=uniform_pairs(layers, 4, 4), range_search="minmax")
    plan = replace(plan, layers={name: plan.layers[name]})  # a table of this one layer
    table = calibrate_table(qmodel, images, plan, settings=SearchSettings(images=2))
    assert table.layers() == (name,) and table.pairs(name) == ((16, 3), (16, 4), (16, 6))
    maps, values = _attention_inputs(qmodel, images)[0]
    for abits in (3, 4, 6):
        softmax, v = table.entry(name, (16, abits)).inputs
        assert isinstance(softmax, kind) and softmax.bits == abits
        assert isinstance(v, AffineParams) and v.bits == abits and v.granularity == "tensor"
        if kind is TanQParams:
            assert 0.05 <= float(softmax.a) < torch.pi
            assert params_equal(softmax, fit_tanq(maps.flatten(), abits, maps, values))
            if abits == 4:  # here the map objective chooses another (a, c): the equality above tells them apart
                assert not params_equal(softmax, fit_tanq(maps.flatten(), abits))
        elif kind is Log2Params:
            assert float(softmax.scale) == pytest.approx(float(maps.max()))
        else:  # minmax recipe: the map's own min/max grid
            low, high = float(softmax.scale * -softmax.zero_point), float(softmax.scale * (2**abits - 1 -
                                                                                           softmax.zero_point))
            span = float(maps.max() - maps.min())
            assert low == pytest.approx(float(maps.min()), abs=span / 2**abits)
            assert high == pytest.approx(float(maps.max()), abs=span / 2**abits)
