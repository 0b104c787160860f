"""Quantized drop-in modules: linear, conv (patch embedding) and the two attention matmuls.

Each module is one *quantization layer* of the mixed-precision problem: it owns a weight quantizer (not the
matmuls) and input activation quantizer(s), a ``component`` type (qkv, proj, fc1, fc2, matmul_qk, matmul_av,
patch_embed, head, reduction, linear) and ``set_bits(wbits, abits)``. Parameters keep timm's names
(``weight``/``bias``), so state_dict keys are unchanged by wrapping.

Target mode (``target != "sim"``, set by ``quant.wrap.wrap_model_``): ``set_bits(wbits, abits)`` names one of the
forms the target executes (``quant.target.form_for_bits``) and configures the quantizers for it: symmetric
per-channel weights and a static input quantizer for ``int8``, block-wise weights (``block_size``) and a float
input for ``w8``/``w4``, block-wise weights and the dynamic int8 block input quantizer for ``w4a8``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import FLOAT_BITS, ActivationQuantizer, UniformQuantizer, WeightQuantizer
from .target import Form, form_for_bits

__all__ = ["QuantConv2d", "QuantLayer", "QuantLinear", "QuantMatMul"]


class QuantLayer(nn.Module):
    """Common interface of quantization layers."""

    component: str = "linear"
    has_weight: bool = True
    #: deployment target (``quant.target.TARGETS``); ``sim`` accepts every bit pair.
    target: str = "sim"
    #: weight block size of the block-wise forms (and of the dynamic input blocks of ``w4a8``).
    block_size: int = 32

    def activation_quantizers(self) -> list[ActivationQuantizer]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def wbits(self) -> int:
        return self.weight_quantizer.bits if self.has_weight else FLOAT_BITS

    @property
    def abits(self) -> int:
        return self.activation_quantizers()[0].bits

    @property
    def form(self) -> Form | None:
        """The target form of the current bit pair (None for ``sim``)."""
        if self.target == "sim":
            return None
        return form_for_bits(self.target, self.component, self.wbits, self.abits)

    def set_bits(self, wbits: int | None = None, abits: int | None = None) -> None:
        """Set weight and/or activation bit-width (16 = float); ranges are refit for the new width.

        Target mode: ``(wbits, abits)`` (a None keeps the current one) must be a form of the target
        (``quant.target.FormError`` otherwise) and the quantizers are configured for that form."""
        if self.target != "sim":
            self._set_form(form_for_bits(self.target, self.component,
                                         self.wbits if wbits is None else wbits,
                                         self.abits if abits is None else abits))
            return
        if wbits is not None and self.has_weight:
            self.weight_quantizer.bits = int(wbits)
            if self.weight_quantizer.calibrated:
                self.weight_quantizer.calibrate(self.weight)
        if abits is not None:
            for quantizer in self.activation_quantizers():
                quantizer.set_bits(abits)

    def _set_form(self, form: Form) -> None:
        if self.has_weight:
            quantizer = self.weight_quantizer
            quantizer.bits = form.wbits
            quantizer.block_size = self.block_size if form.weights == "block" else None
            quantizer.symmetric = form.weights == "channel"
            if quantizer.calibrated:
                quantizer.calibrate(self.weight)
        for quantizer in self.activation_quantizers():
            if isinstance(quantizer, UniformQuantizer):
                quantizer.dynamic_block = self.block_size if form.activations == "dynamic_block" else None
            quantizer.set_bits(form.abits)

    def set_quant_enabled(self, weights: bool | None = None, activations: bool | None = None) -> None:
        """Switch weight and/or activation quantization on or off (off = exact float behaviour)."""
        if weights is not None and self.has_weight:
            self.weight_quantizer.enabled = weights
        if activations is not None:
            for quantizer in self.activation_quantizers():
                quantizer.enabled = activations

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def describe(self) -> dict:
        """Per-layer settings: component, weight and activation quantizer descriptions."""
        info: dict = {"component": self.component}
        if self.has_weight:
            info["weights"] = self.weight_quantizer.describe()
        info["activations"] = [q.describe() for q in self.activation_quantizers()]
        return info


class QuantLinear(QuantLayer):
    """``nn.Linear`` with fake-quantized weight (per output channel) and input (per tensor)."""

    def __init__(self, linear: nn.Linear, component: str, input_quantizer: ActivationQuantizer | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.component = component
        self.weight_quantizer = WeightQuantizer()
        self.input_quantizer = input_quantizer or UniformQuantizer()

    def activation_quantizers(self) -> list[ActivationQuantizer]:
        return [self.input_quantizer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{self.component}: {self.in_features}->{self.out_features}, w{self.wbits}a{self.abits}"


class QuantConv2d(QuantLayer):
    """``nn.Conv2d`` (patch embedding) with fake-quantized weight and input."""

    def __init__(self, conv: nn.Conv2d, component: str = "patch_embed"):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        self.component = component
        self.weight_quantizer = WeightQuantizer()
        self.input_quantizer = UniformQuantizer()

    def activation_quantizers(self) -> list[ActivationQuantizer]:
        return [self.input_quantizer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias,
            self.stride, self.padding, self.dilation, self.groups,
        )


class QuantMatMul(QuantLayer):
    """``a @ b`` with both operands fake-quantized (no weights). Used for ``q @ k^T`` and ``attn @ v``."""

    has_weight = False

    def __init__(self, component: str, quantizer_a: ActivationQuantizer, quantizer_b: ActivationQuantizer):
        super().__init__()
        self.component = component
        self.quantizer_a = quantizer_a
        self.quantizer_b = quantizer_b

    def activation_quantizers(self) -> list[ActivationQuantizer]:
        return [self.quantizer_a, self.quantizer_b]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.quantizer_a.observing and hasattr(self.quantizer_a, "observe_product"):
            self.quantizer_a.observe_product(a, b)
        return self.quantizer_a(a) @ self.quantizer_b(b)

    def extra_repr(self) -> str:
        return f"{self.component}: a{self.abits}"
