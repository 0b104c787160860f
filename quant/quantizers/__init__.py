"""Fake quantizers: uniform (activations, per-channel weights), log2 and TanQ (post-softmax)."""

from .base import FLOAT_BITS, ActivationQuantizer, round_ste
from .log2 import Log2Quantizer
from .tanq import TanQuantizer, tanq_fake_quant
from .uniform import UniformQuantizer, fake_quant_uniform, search_uniform_range
from .weight import WeightQuantizer

__all__ = [
    "FLOAT_BITS",
    "ActivationQuantizer",
    "Log2Quantizer",
    "TanQuantizer",
    "UniformQuantizer",
    "WeightQuantizer",
    "fake_quant_uniform",
    "round_ste",
    "search_uniform_range",
    "tanq_fake_quant",
]
