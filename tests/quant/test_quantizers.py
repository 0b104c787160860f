"""Quantizer accuracy (SNR against float) per bit-width, TanQ vs log2, straight-through gradients."""

import math

import pytest
import torch

from quant.quantizers import Log2Quantizer, TanQuantizer, UniformQuantizer, WeightQuantizer


def snr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    return 10 * math.log10(reference.pow(2).mean().item() / (approx - reference).pow(2).mean().item())


def calibrated(quantizer, x):
    quantizer.observing = True
    quantizer(x)
    quantizer.observing = False
    quantizer.finalize()
    return quantizer


@pytest.mark.parametrize(("bits", "min_snr"), [(2, 6.0), (3, 12.0), (4, 18.0), (6, 28.0), (8, 40.0)],
                         ids=lambda v: f"{v}")
def test_uniform_activation_snr_per_bits(bits, min_snr):
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    q = calibrated(UniformQuantizer(bits), x)
    assert snr_db(x, q(x)) > min_snr


@pytest.mark.parametrize(("bits", "min_snr"), [(2, 7.0), (3, 13.0), (4, 19.0), (6, 30.0), (8, 42.0)],
                         ids=lambda v: f"{v}")
def test_weight_per_channel_snr_per_bits(bits, min_snr):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=gen) * torch.rand(64, 1, generator=gen) * 3
    q = WeightQuantizer(bits)
    q.calibrate(w)
    assert snr_db(w, q(w)) > min_snr


def test_weight_range_search_beats_minmax_at_3_bits():
    w = torch.randn(32, 512, generator=torch.Generator().manual_seed(2))
    searched, plain = WeightQuantizer(3), WeightQuantizer(3, minmax=True)
    searched.calibrate(w)
    plain.calibrate(w)
    assert snr_db(w, searched(w)) > snr_db(w, plain(w)) + 1.0


def test_quantized_weights_lie_on_integer_grid():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    q = WeightQuantizer(4)
    q.calibrate(w)
    codes = (q(w) / q.scale + q.zero_point)
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= -1e-4 and codes.max() <= 15 + 1e-4


@pytest.mark.parametrize("quantizer_cls", [UniformQuantizer, Log2Quantizer, TanQuantizer],
                         ids=["uniform", "log2", "tanq"])
def test_16_bits_is_identity(quantizer_cls):
    x = torch.rand(1000)
    q = calibrated(quantizer_cls(16), x)
    assert torch.equal(q(x), x)


def test_straight_through_gradient_reaches_input_and_scale():
    x = torch.randn(1000, requires_grad=True)
    q = calibrated(UniformQuantizer(4), x.detach())
    q.scale.requires_grad_(True)
    q(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.scale.grad is not None and q.scale.grad.abs() > 0


def test_set_bits_refits_from_sample_without_new_data():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(4))
    q = calibrated(UniformQuantizer(8), x)
    snr8 = snr_db(x, q(x))
    q.set_bits(3)
    snr3 = snr_db(x, q(x))
    q.set_bits(8)
    assert snr_db(x, q(x)) == pytest.approx(snr8)
    assert snr3 < snr8 - 20


@pytest.mark.parametrize("bits", [3, 4, 6], ids=lambda b: f"{b}bit")
def test_tanq_endpoints_exact_and_monotone(bits):
    x = torch.linspace(0, 1, 2001)
    q = calibrated(TanQuantizer(bits), torch.softmax(torch.randn(50, 64) * 3, -1).flatten())
    y = q(x)
    assert y[0].item() == pytest.approx(0.0, abs=1e-6) and y[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(y[1:] >= y[:-1] - 1e-6)
    assert len(torch.unique(y.round(decimals=5))) <= 2**bits


def test_per_token_scale_uses_each_token_range():
    x = torch.cat([torch.randn(1, 4, 32), 100 * torch.randn(1, 4, 32)], dim=1)
    per_token = UniformQuantizer(4, granularity="token")
    per_tensor = calibrated(UniformQuantizer(4), x)
    small = x[:, :4]
    assert snr_db(small, per_token(x)[:, :4]) > snr_db(small, per_tensor(x)[:, :4]) + 10
