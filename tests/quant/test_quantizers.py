"""The quantizers as values: fit functions (SNR against float per bit-width), the params records (validation,
value equality, storage), integer grids and codes of every weight layout, straight-through gradients."""

import math

import pytest
import torch

from quant.quantizers import (
    AffineParams,
    DynamicParams,
    LayerParams,
    Log2Params,
    TanQParams,
    WeightParams,
    fake_quant,
    fake_quant_weight,
    fit_log2,
    fit_tanq,
    fit_uniform,
    fit_weight,
    map_tensors,
    params_equal,
    quantize_weight,
    tanq_fake_quant,
    weight_codes,
)
from quant.quantizers.serialize import from_record, to_record
from quant.quantizers.weight import dequantize_codes


def snr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    return 10 * math.log10(reference.pow(2).mean().item() / (approx - reference).pow(2).mean().item())


def _weights(seed: int = 1) -> torch.Tensor:
    """[64, 256] weights whose rows have very different ranges (as per-channel quantization expects)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(64, 256, generator=gen) * torch.rand(64, 1, generator=gen) * 3


@pytest.mark.parametrize(("bits", "min_snr"), [(2, 6.0), (3, 12.0), (4, 18.0), (6, 28.0), (8, 40.0)],
                         ids=lambda v: f"{v}")
def test_uniform_activation_snr_per_bits(bits, min_snr):
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    params = fit_uniform(x, bits)
    assert isinstance(params, AffineParams) and params.bits == bits and params.granularity == "tensor"
    assert params.scale.dim() == 0
    assert snr_db(x, fake_quant(x, params)) > min_snr


@pytest.mark.parametrize(("bits", "min_snr"), [(2, 7.0), (3, 13.0), (4, 19.0), (6, 30.0), (8, 42.0)],
                         ids=lambda v: f"{v}")
def test_weight_per_channel_snr_per_bits(bits, min_snr):
    w = _weights()
    params = fit_weight(w, bits)
    assert params.layout == "channel" and tuple(params.scale.shape) == (64, 1)
    assert snr_db(w, fake_quant_weight(w, params)) > min_snr


def test_weight_range_search_beats_minmax_at_3_bits():
    w = torch.randn(32, 512, generator=torch.Generator().manual_seed(2))
    searched, plain = fit_weight(w, 3), fit_weight(w, 3, minmax=True)
    assert snr_db(w, fake_quant_weight(w, searched)) > snr_db(w, fake_quant_weight(w, plain)) + 1.0
    # minmax is exactly the per-row min/max grid (zero included)
    low, high = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
    assert torch.allclose(plain.scale, (high - low) / 7, rtol=1e-6)


def test_fits_are_pure_functions_of_their_sample():
    """What ``set_bits`` refitting from the kept sample used to promise: a fit depends on (sample, bits) only, so
    refitting a width gives the same value again, and fewer bits cost accuracy."""
    x = torch.randn(5000, generator=torch.Generator().manual_seed(4))
    p8 = fit_uniform(x, 8)
    p3 = fit_uniform(x, 3)
    assert params_equal(fit_uniform(x, 8), p8) and not params_equal(p3, p8)
    snr8, snr3 = snr_db(x, fake_quant(x, p8)), snr_db(x, fake_quant(x, p3))
    assert snr3 < snr8 - 20
    w = _weights(5)
    assert params_equal(fit_weight(w, 4), fit_weight(w.clone(), 4))


@pytest.mark.parametrize("layout", ["channel", "symmetric", "block"])
def test_quantized_weights_lie_on_integer_grid_and_codes_reproduce_them(layout):
    """The codes (what a bundle stores) dequantize bit-exactly to the fake-quantized weight, in every layout."""
    w = torch.randn(16, 72, generator=torch.Generator().manual_seed(3))  # 72 = 2 blocks of 32 + a padded one
    params = fit_weight(w, 4, layout=layout, block_size=32 if layout == "block" else None)
    expected_shape = (16, 3, 1) if layout == "block" else (16, 1)
    assert tuple(params.scale.shape) == expected_shape
    codes = weight_codes(w, params)
    assert codes.shape == w.shape
    assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 15
    assert torch.equal(params.zero_point, params.zero_point.round())
    assert torch.equal(dequantize_codes(codes, params), fake_quant_weight(w, params))
    if layout == "symmetric":  # int8-style: zero point 2^(b-1), so the signed code has zero point 0
        assert bool((params.zero_point == 8).all())
    assert snr_db(w, fake_quant_weight(w, params)) > 18.0


def test_block_layout_follows_per_block_ranges():
    """Rows whose blocks have ranges 100x apart: one scale per block keeps the small block, per channel loses it."""
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(6))
    w[:, 32:] *= 100
    block, channel = fit_weight(w, 4, layout="block", block_size=32), fit_weight(w, 4)
    small = w[:, :32]
    assert snr_db(small, fake_quant_weight(w, block)[:, :32]) > snr_db(small, fake_quant_weight(w, channel)[:, :32]) + 20


def test_learned_codes_replace_rounding_and_quantize_weight_dispatches():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(7))
    params = fit_weight(w, 3)
    codes = weight_codes(w, params)
    flipped = torch.clamp(codes + 1, 0, 7).to(torch.uint8)  # another rounding on the same grid
    learned = WeightParams(params.scale, params.zero_point, 3, codes=flipped)
    out = fake_quant_weight(w * 1000, learned)  # the float weight is not read when codes are given
    assert torch.equal(out, (flipped.float() - params.zero_point) * params.scale)
    assert params_equal(learned.without_codes(), params)
    assert torch.equal(quantize_weight(w, learned), out)
    assert quantize_weight(w, None) is w
    with pytest.raises(TypeError, match="not weight params"):
        quantize_weight(w, fit_uniform(w.reshape(-1), 4))


@pytest.mark.parametrize("make", [
    lambda: AffineParams(torch.tensor(0.1), torch.tensor(3.0), 16),
    lambda: DynamicParams(16),
    lambda: TanQParams(torch.tensor(1.0), torch.tensor(0.5), 16),
    lambda: Log2Params(torch.tensor(1.0), 16),
    lambda: WeightParams(torch.ones(2, 1), torch.zeros(2, 1), 16),
], ids=["uniform", "dynamic", "tanq", "log2", "weight"])
def test_float_is_no_params_not_16_bits(make):
    """16 bits used to be an identity quantizer; now float is written as no params (None), which is the identity,
    and a record claiming 16 bits is refused."""
    x = torch.rand(1000)
    assert fake_quant(x, None) is x
    assert LayerParams.float(2).inputs == (None, None) and LayerParams.float(2).wbits == 16
    with pytest.raises(ValueError, match="16 = float is written as no params"):
        make()


def test_records_validate_their_settings():
    with pytest.raises(ValueError, match="granularity must be one of"):
        AffineParams(torch.tensor(1.0), torch.tensor(0.0), 4, "channel")
    with pytest.raises(ValueError, match="differs from zero point shape"):
        AffineParams(torch.ones(3, 1), torch.zeros(()), 4, "position")
    with pytest.raises(ValueError, match="int8 with a block_size"):
        DynamicParams(4, "block", 32)
    with pytest.raises(ValueError, match="block_size is given exactly for the block layout"):
        WeightParams(torch.ones(2, 1), torch.zeros(2, 1), 4, "channel", 32)
    with pytest.raises(ValueError, match="weight layout must be one of"):
        WeightParams(torch.ones(2, 1), torch.zeros(2, 1), 4, "row")
    with pytest.raises(ValueError, match="bits must be an int"):
        AffineParams(torch.tensor(1.0), torch.tensor(0.0), True)


@pytest.mark.parametrize(("granularity", "shape"), [("tensor", (65, 1)), ("head", (65, 1)), ("position", ())],
                         ids=["tensor-as-position", "head-as-position", "position-as-tensor"])
def test_affine_scale_shape_must_match_its_granularity(granularity, shape):
    """The module doc fixes the shapes: ``()`` per tensor, ``x.shape[1:-1] + (1,)`` per position, ``[H, 1, 1]`` per
    head. A record whose shape contradicts its granularity describes another quantizer than it claims (a stored
    one would be exported or reported as per tensor while it runs per position)."""
    with pytest.raises(ValueError, match=f"a {granularity} grid cannot have scales of shape"):
        AffineParams(torch.full(shape, 0.1), torch.zeros(shape), 4, granularity)


def test_params_equal_compares_values_bit_exactly():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(8))
    p = fit_uniform(x, 4)
    copy = AffineParams(p.scale.clone(), p.zero_point.clone(), 4)
    assert p is not copy and params_equal(p, copy)
    nudged = AffineParams(torch.nextafter(p.scale, torch.tensor(2.0)), p.zero_point, 4)
    assert not params_equal(p, nudged)  # one ulp apart
    assert not params_equal(p, AffineParams(p.scale.double(), p.zero_point.double(), 4))  # same value, other dtype
    assert not params_equal(p, AffineParams(p.scale, p.zero_point, 5))
    assert not params_equal(p, Log2Params(p.scale, 4))
    assert not params_equal(p, None) and params_equal(None, None)
    layer = LayerParams(fit_weight(_weights(), 4), (p,))
    same = map_tensors(layer, lambda t: t.clone())
    assert same.weight is not layer.weight and params_equal(layer, same)
    assert not params_equal(layer, LayerParams(layer.weight, (None,)))


@pytest.mark.parametrize("params", [
    AffineParams(torch.full((65, 1), 0.05), torch.arange(65.0).reshape(65, 1) % 16, 4, "position"),
    DynamicParams(8, "block", 32),
    DynamicParams(6, "token"),
    TanQParams(torch.tensor(2.5), torch.tensor(0.9), 3),
    Log2Params(torch.tensor(0.75), 4),
    WeightParams(torch.rand(4, 3, 1) + 0.1, torch.full((4, 3, 1), 7.0), 4, "block", 32,
                 torch.randint(0, 16, (4, 80), dtype=torch.uint8)),
], ids=["affine-position", "dynamic-block", "dynamic-token", "tanq", "log2", "weight-block-codes"])
def test_records_round_trip_through_storage(params):
    meta, tensors = to_record(params)
    assert all(not t.requires_grad and t.device.type == "cpu" for t in tensors.values())
    again = from_record(meta, tensors)
    assert params_equal(again, params)


def test_stored_records_are_validated_on_the_way_back():
    meta, tensors = to_record(AffineParams(torch.tensor(0.1), torch.tensor(2.0), 4))
    with pytest.raises(ValueError, match="somewhere: unknown params kind 'cubic'"):
        from_record({**meta, "kind": "cubic"}, tensors, where="somewhere")
    with pytest.raises(ValueError, match="missing tensor 'zero_point'"):
        from_record(meta, {"scale": tensors["scale"]})
    with pytest.raises(ValueError, match="must be floating point"):
        from_record(meta, {**tensors, "scale": torch.tensor(1)})
    with pytest.raises(ValueError, match="bits must be an int"):
        from_record({**meta, "bits": 32}, tensors)
    weight_meta, weight_tensors = to_record(WeightParams(torch.ones(2, 1), torch.zeros(2, 1), 4,
                                                         codes=torch.zeros(2, 5, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="codes must be uint8"):
        from_record(weight_meta, {**weight_tensors, "codes": weight_tensors["codes"].float()})


def test_straight_through_gradient_reaches_input_and_scale():
    x = torch.randn(1000, requires_grad=True)
    fitted = fit_uniform(x.detach(), 4)
    scale = fitted.scale.clone().requires_grad_(True)
    fake_quant(x, AffineParams(scale, fitted.zero_point, 4)).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # straight-through: the gradient passes unchanged inside the grid's range and is 0 outside (clipped)
    low, high = -fitted.zero_point * fitted.scale, (15 - fitted.zero_point) * fitted.scale
    inside = (x.detach() > low + fitted.scale) & (x.detach() < high - fitted.scale)
    quantized = fake_quant(x.detach(), fitted)
    assert torch.allclose(x.grad[inside], 2 * quantized[inside])
    assert scale.grad is not None and scale.grad.abs() > 0


@pytest.mark.parametrize("bits", [3, 4, 6], ids=lambda b: f"{b}bit")
def test_tanq_endpoints_exact_and_monotone(bits):
    x = torch.linspace(0, 1, 2001)
    params = fit_tanq(torch.softmax(torch.randn(50, 64, generator=torch.Generator().manual_seed(9)) * 3,
                                    -1).flatten(), bits)
    assert 0.05 <= float(params.a) < math.pi and 0.5 <= float(params.c) < 1.0
    y = fake_quant(x, params)
    assert torch.equal(y, tanq_fake_quant(x, params.a, bits, params.c))
    assert y[0].item() == pytest.approx(0.0, abs=1e-6) and y[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(y[1:] >= y[:-1] - 1e-6)
    assert len(torch.unique(y.round(decimals=5))) <= 2**bits


def test_tanq_gradient_is_the_straight_through_derivative():
    """The fused autograd path gives the same values as the no-grad path and the chain-rule derivative."""
    params = TanQParams(torch.tensor(2.0), torch.tensor(0.7), 4)
    x = torch.linspace(0.01, 0.99, 257, dtype=torch.float64).float().requires_grad_(True)
    y = fake_quant(x, params)
    y.sum().backward()
    assert torch.equal(y.detach(), fake_quant(x.detach(), params))
    a, c = 2.0, 0.7
    t0, t1 = math.tan(-a * c), math.tan(a * (1 - c))
    step = 2.0 / 15
    u = torch.tan(a * (x.detach() - c))
    yq = torch.clamp(torch.round(((u - t0) * 2 / (t1 - t0)) / step) * step - 1.0, -1, 1)
    w = t0 + (yq + 1) * (t1 - t0) / 2
    expected = (1 + u**2) / (1 + w**2)
    interior = yq.abs() < 1
    assert torch.allclose(x.grad[interior], expected[interior], rtol=1e-4)


def test_log2_levels_are_powers_of_two_below_the_maximum():
    sample = torch.softmax(torch.randn(40, 64, generator=torch.Generator().manual_seed(10)) * 4, -1).flatten()
    params = fit_log2(sample, 4)
    assert float(params.scale) == pytest.approx(float(sample.max()))
    y = fake_quant(sample, params)
    nonzero = y[y > 0]
    exponents = torch.log2(params.scale / nonzero)
    assert torch.allclose(exponents, exponents.round(), atol=1e-5)
    assert exponents.max() <= 14 and float(y.max()) == pytest.approx(float(params.scale))
    assert bool((y[sample < params.scale * 2.0**-15] == 0).all())  # below the smallest level: exactly 0


def test_per_token_scale_uses_each_token_range():
    x = torch.cat([torch.randn(1, 4, 32), 100 * torch.randn(1, 4, 32)], dim=1)
    per_token = DynamicParams(4, "token")
    per_tensor = fit_uniform(x.reshape(-1), 4)
    small = x[:, :4]
    assert snr_db(small, fake_quant(x, per_token)[:, :4]) > snr_db(small, fake_quant(x, per_tensor)[:, :4]) + 10


def test_dynamic_blocks_are_symmetric_int8_per_row_and_block():
    """MatMulNBits' accuracy_level=4 input: each row and block of 32 gets amax / 127; the padded tail block too."""
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(11))
    x[..., 32:] *= 50
    y = fake_quant(x, DynamicParams(8, "block", 32))
    assert y.shape == x.shape
    for block in (slice(0, 32), slice(32, 40)):
        scale = x[..., block].abs().amax(-1, keepdim=True) / 127
        codes = y[..., block] / scale
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        assert (y[..., block] - x[..., block]).abs().le(scale / 2 + 1e-6).all()
        assert torch.allclose(y[..., block].abs().amax(-1, keepdim=True), x[..., block].abs().amax(-1, keepdim=True))
