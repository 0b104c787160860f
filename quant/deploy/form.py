"""What a deployment target's *form* is, independent of any runtime: the ``Form`` record, ``FormError`` and the layer
kinds forms are defined for.

A form is one way a runtime executes a quantization layer (its weights, its input activations and the op the runtime
runs); its ``(wbits, abits)`` pair is the key the solver, the sensitivity table and the parameter table see. Each
target package (``quant.deploy.onnxruntime_cpu``) lists its forms; ``quant.target`` is the registry over targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["LAYER_KINDS", "Form", "FormError", "LayerKind", "layer_kind"]

LayerKind = Literal["linear", "conv", "matmul"]
#: Layer kinds forms are defined for: token/2-D linears, the patch-embedding convolution, the attention matmuls.
LAYER_KINDS: tuple[LayerKind, ...] = ("linear", "conv", "matmul")


class FormError(ValueError):
    """A ``(wbits, abits)`` pair or form name that the target cannot execute for a layer; the message lists the
    forms it can."""


@dataclass(frozen=True)
class Form:
    """One way a runtime executes a quantization layer.

    name: stable identifier (``fp32``, ``int8``, ``w8``, ``w4``, ``w4a8``); wbits/abits: the solver key (16 = float);
    weights: ``float``, ``channel`` (symmetric per output channel) or ``block`` (asymmetric, blocks along K);
    activations: ``float``, ``static`` (uniform per tensor, calibrated) or ``dynamic_block`` (int8 symmetric per
    row and K-block, computed at run time); kinds: layer kinds that accept it; onnx: the op the runtime runs;
    accuracy_level: ``MatMulNBits`` accuracy level (None for other ops).
    """

    name: str
    wbits: int
    abits: int
    weights: Literal["float", "channel", "block"]
    activations: Literal["float", "static", "dynamic_block"]
    kinds: tuple[str, ...]
    onnx: str
    accuracy_level: int | None = None

    def to_dict(self) -> dict:
        """JSON-able description for reports."""
        return {"name": self.name, "wbits": self.wbits, "abits": self.abits, "weights": self.weights,
                "activations": self.activations, "onnx": self.onnx}


def layer_kind(component: str) -> LayerKind:
    """``conv`` for the patch embedding, ``matmul`` for the attention matmuls, else ``linear``."""
    if component == "patch_embed":
        return "conv"
    if component in ("matmul_qk", "matmul_av"):
        return "matmul"
    return "linear"
