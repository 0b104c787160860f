"""Per-layer forms a deployment target executes, and their ``(wbits, abits)`` keys.

A *target* names the runtime a job deploys to. ``sim`` is mpq's simulated fake quantization: any
``(wbits, abits)`` pair of ``quant.config.ALLOWED_WBITS`` x ``ALLOWED_ABITS``, no runtime executes it as integer
kernels. ``onnxruntime-cpu`` restricts each layer to forms onnxruntime's CPU execution provider runs:

====================  ========  ==========================================  ======================  =================================================
form                  (w, a)    weights                                     input activations        ONNX (what onnxruntime runs)
====================  ========  ==========================================  ======================  =================================================
``fp32``              (16, 16)  float32                                     float32                 ``MatMul`` / ``Conv``
``int8``              (8, 8)    int8 symmetric per output channel (zp 0)    uint8 static per tensor  ``QuantizeLinear/DequantizeLinear`` around the
                                                                                                    input, ``DequantizeLinear(int8 W, axis)``;
                                                                                                    fused to ``MatMulIntegerToFloat`` for
                                                                                                    [B, T, K] linears; the patch-embedding Conv
                                                                                                    and a 2-D head keep ``DequantizeLinear`` and
                                                                                                    run in float (onnxruntime 1.32)
``w8``                (8, 16)   uint8 asymmetric, blocks of ``block_size``  float32                 ``com.microsoft.MatMulNBits`` bits=8,
                                along K (scale + zero point per block)                              accuracy_level=0
``w4``                (4, 16)   uint4 asymmetric, blocks along K            float32                 ``MatMulNBits`` bits=4, accuracy_level=0
``w4a8``              (4, 8)    uint4 asymmetric, blocks along K            int8 dynamic, symmetric  ``MatMulNBits`` bits=4, accuracy_level=4
                                                                            per row and K-block
``int8`` (matmul)     (16, 8)   -                                           both operands uint8      QDQ on both inputs of ``MatMul``
                                                                            static per tensor
====================  ========  ==========================================  ======================  =================================================

Linear layers (qkv, proj, fc1, fc2, reduction, head) take every linear form; the patch-embedding convolution
takes ``fp32`` and ``int8``; the attention matmuls ``q @ k^T`` and ``attn @ v`` take ``fp32`` and ``int8``
(the post-softmax map is quantized with a plain uniform uint8 quantizer, not TanQ/log2, because onnxruntime has no
such kernel). Softmax, LayerNorm, GELU and the residual adds stay float32 in every form.

The ``(wbits, abits)`` key of a form is what the solver, the sensitivity table and ``QuantLayer.set_bits`` see,
so one layer never has two forms with the same key. Measured on onnxruntime 1.32 (AVX-512 VNNI CPU, deit_small
fc1 shape [197, 384] x [384, 1536]): fp32 2.3 ms, int8 QDQ with int8 weights 0.71 ms (uint8 weights: 1.6 ms, hence
symmetric int8 weights), w4 1.2 ms, w4a8 2.0 ms, w8 2.6 ms: fewer bits is not automatically faster, which is why the
allocation uses a measured latency table (``quant.latency``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FORMS",
    "FORM_NAMES",
    "TARGETS",
    "Form",
    "FormError",
    "form_by_name",
    "form_for_bits",
    "form_weight_bytes",
    "forms_for",
    "layer_kind",
]

#: Deployment targets a job may name (``MethodSpec.target``).
TARGETS = ("sim", "onnxruntime-cpu")

LayerKind = Literal["linear", "conv", "matmul"]


class FormError(ValueError):
    """A ``(wbits, abits)`` pair or form name that the target cannot execute for a layer; the message lists the
    forms it can."""


@dataclass(frozen=True)
class Form:
    """One way a runtime executes a quantization layer.

    name: stable identifier (``fp32``, ``int8``, ``w8``, ``w4``, ``w4a8``); wbits/abits: the solver key (16 = float);
    weights: ``float``, ``channel`` (symmetric per output channel) or ``block`` (asymmetric, blocks along K);
    activations: ``float``, ``static`` (uniform per tensor, calibrated) or ``dynamic_block`` (int8 symmetric per
    row and K-block, computed at run time); kinds: layer kinds that accept it; onnx: the op onnxruntime runs;
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


_ORT_FORMS = (
    Form("fp32", 16, 16, "float", "float", ("linear", "conv", "matmul"), "MatMul/Conv (float32)"),
    Form("int8", 8, 8, "channel", "static", ("linear", "conv"),
         "QDQ: uint8 activations, int8 per-channel weights (MatMulIntegerToFloat for token linears)"),
    Form("int8", 16, 8, "float", "static", ("matmul",), "QDQ: uint8 on both MatMul inputs"),
    Form("w8", 8, 16, "block", "float", ("linear",), "MatMulNBits bits=8 accuracy_level=0", 0),
    Form("w4", 4, 16, "block", "float", ("linear",), "MatMulNBits bits=4 accuracy_level=0", 0),
    Form("w4a8", 4, 8, "block", "dynamic_block", ("linear",), "MatMulNBits bits=4 accuracy_level=4", 4),
)

#: Forms per target (``sim`` has none: every allowed bit pair is simulated).
FORMS: dict[str, tuple[Form, ...]] = {"sim": (), "onnxruntime-cpu": _ORT_FORMS}

#: Form names a job may list in ``MethodSpec.forms`` for ``onnxruntime-cpu``.
FORM_NAMES = tuple(dict.fromkeys(f.name for f in _ORT_FORMS))


def layer_kind(component: str) -> LayerKind:
    """``conv`` for the patch embedding, ``matmul`` for the attention matmuls, else ``linear``."""
    if component == "patch_embed":
        return "conv"
    if component in ("matmul_qk", "matmul_av"):
        return "matmul"
    return "linear"


def _known(target: str) -> tuple[Form, ...]:
    if target not in FORMS:
        raise FormError(f"unknown target {target!r}; targets are {', '.join(TARGETS)}")
    return FORMS[target]


def forms_for(target: str, component: str, allowed: tuple[str, ...] | list[str] = ()) -> tuple[Form, ...]:
    """The forms ``target`` executes for a layer of ``component``, restricted to the names in ``allowed``
    (empty: all). ``sim`` returns ``()`` (no restriction)."""
    kind = layer_kind(component)
    return tuple(f for f in _known(target) if kind in f.kinds and (not allowed or f.name in allowed))


def form_for_bits(target: str, component: str, wbits: int, abits: int) -> Form:
    """The form of ``(wbits, abits)`` for a layer of ``component`` (weightless layers: ``wbits`` is ignored and
    read as 16). Raises ``FormError`` listing the executable pairs."""
    kind = layer_kind(component)
    if kind == "matmul":
        wbits = 16
    candidates = forms_for(target, component)
    for form in candidates:
        if (form.wbits, form.abits) == (int(wbits), int(abits)):
            return form
    listed = ", ".join(f"{f.name}=(w{f.wbits}, a{f.abits})" for f in candidates)
    raise FormError(f"target {target!r} cannot execute a {component} layer at (wbits={wbits}, abits={abits}); "
                    f"its forms are {listed}")


def form_by_name(target: str, component: str, name: str) -> Form:
    """The form called ``name`` for a layer of ``component``; ``FormError`` when the target has none."""
    for form in forms_for(target, component):
        if form.name == name:
            return form
    names = ", ".join(f.name for f in forms_for(target, component))
    raise FormError(f"target {target!r} has no form {name!r} for a {component} layer; its forms are {names}")


def form_weight_bytes(form: Form, params: int, out_channels: int, block_size: int) -> float:
    """Bytes the deployed graph stores for a layer's weight in ``form`` (the ONNX initializers; biases excluded).

    ``fp32``: 4 bytes per parameter. ``int8``: 1 byte per parameter plus, per output channel, a float32 scale and an
    int8 zero point. Block forms (``MatMulNBits``): ``bits / 8`` bytes per parameter of the zero-padded blocks plus,
    per block, a float32 scale and a ``bits``-wide zero point (each row's zero points padded to whole bytes).
    Weightless layers (``params == 0``): 0.
    """
    if params == 0:
        return 0.0
    if form.weights == "float":
        return 4.0 * params
    if form.weights == "channel":
        return params + out_channels * 5.0
    k = params // max(out_channels, 1)
    blocks = -(-k // block_size)
    zero_points = -(-blocks * form.wbits // 8)  # bytes per row: 4-bit zero points pack two per byte, rows padded
    return out_channels * (blocks * (block_size * form.wbits / 8 + 4.0) + zero_points)
