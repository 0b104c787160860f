"""Quantized drop-in modules: linear, conv (patch embedding) and the two attention matmuls.

Each module is one *quantization layer* of the mixed-precision problem: it runs with one
:class:`~quant.quantizers.LayerParams` value (its weight's params and one entry per input operand; see
:class:`~quant.quantizers.ParamsHolder`), has a ``component`` type (qkv, proj, fc1, fc2, matmul_qk, matmul_av,
patch_embed, head, reduction, linear) and keeps timm's parameter names (``weight``/``bias``), so state_dict keys are
unchanged by wrapping. A freshly wrapped layer has float params: it computes exactly what the float module did.

``target``/``block_size`` (given when wrapping, ``quant.wrap.wrap_model_``) name the deployment target; on a runtime
target a layer's ``(wbits, abits)`` names one of the forms the target executes (``quant.target``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import ParamsHolder, fake_quant, quantize_weight
from .target import Form, form_for_bits

__all__ = ["QuantConv2d", "QuantLayer", "QuantLinear", "QuantMatMul"]


class QuantLayer(ParamsHolder):
    """Common interface of quantization layers."""

    component: str = "linear"

    def __init__(self, component: str, target: str = "sim", block_size: int = 32) -> None:
        super().__init__()
        self.component = component
        #: deployment target (``quant.target.TARGETS``); ``sim`` accepts every bit pair.
        self.target = target
        #: weight block size of the target's block-wise forms (and of the dynamic input blocks of ``w4a8``).
        self.block_size = int(block_size)

    @property
    def wbits(self) -> int:
        """Weight bits of the current params (16 = float, and for layers without weights)."""
        return self.params.wbits

    @property
    def abits(self) -> int:
        """Input bits of the current params (16 = float)."""
        return self.params.abits

    @property
    def form(self) -> Form | None:
        """The target form of the current bit pair (None for ``sim``)."""
        if self.target == "sim":
            return None
        return form_for_bits(self.target, self.component, self.wbits, self.abits)

    def quantized_weight(self) -> torch.Tensor:
        """The weight as this layer computes with it."""
        return quantize_weight(self.weight, self.params.weight)


class QuantLinear(QuantLayer):
    """``nn.Linear`` with quantized weight and input."""

    def __init__(self, linear: nn.Linear, component: str, target: str = "sim", block_size: int = 32):
        super().__init__(component, target, block_size)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self.params
        return F.linear(fake_quant(x, params.inputs[0]), quantize_weight(self.weight, params.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{self.component}: {self.in_features}->{self.out_features}, w{self.wbits}a{self.abits}"


class QuantConv2d(QuantLayer):
    """``nn.Conv2d`` (patch embedding) with quantized weight and input."""

    def __init__(self, conv: nn.Conv2d, component: str = "patch_embed", target: str = "sim", block_size: int = 32):
        super().__init__(component, target, block_size)
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self.params
        return F.conv2d(fake_quant(x, params.inputs[0]), quantize_weight(self.weight, params.weight), self.bias,
                        self.stride, self.padding, self.dilation, self.groups)


class QuantMatMul(QuantLayer):
    """``a @ b`` with both operands quantized (no weights). Used for ``q @ k^T`` and ``attn @ v``."""

    has_weight = False
    n_inputs = 2

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        params = self.params
        return fake_quant(a, params.inputs[0]) @ fake_quant(b, params.inputs[1])

    def extra_repr(self) -> str:
        return f"{self.component}: a{self.abits}"
